"""Kill, signal and corruption trials against real runs; writes docs/reliability.md.

  python tools/reliability_trials.py [--cache_dir DIR]

A reference run trains a tiny config uninterrupted. Each trial runs the same
config and disturbs it: `kill -9` at a moment of the run, SIGTERM or SIGINT
at a moment, or damage to the newest checkpoint's bytes after a stop; then
relaunches until the run completes. A trial counts as "nothing lost" when the
completed run's final parameters and optimizer state are bitwise those of the
reference (compared through the checksums every checkpoint records), its
metrics.jsonl holds each record once, and every relaunch exited as expected.
Outside the test suite: it takes several minutes.
"""
import argparse
import datetime
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).parents[1]
STEPS = 300
FLAGS = ["--config.vocab_size=400", "--config.tokenizer.model_type=bpe",
         "--config.data.max_documents=300", "--config.data.seq_len=32",
         "--config.train.batch_size=8", f"--config.train.num_steps={STEPS}",
         "--config.train.log_every=10", "--config.train.eval_every=100",
         "--config.train.checkpoint_every=50", "--config.train.eval_batches=2",
         "--config.optim.warmup_steps=2"]


def launch(work, cache):
  return subprocess.Popen(
      [sys.executable, str(ROOT / "experiments" / "pretrain.py"), "--config",
       f"{ROOT / 'configs' / 'bert.py'}:size=tiny,runlocal", "--workdir",
       str(work), f"--config.data.cache_dir={cache}", *FLAGS],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def final_checksums(work):
  """The checksums recorded with the final checkpoint, once its arrays are
  checked against them (`pretrained.load` restores and verifies)."""
  from mlm_jax import pretrained  # pylint: disable=import-outside-toplevel
  path = work / "checkpoints" / str(STEPS) / "checksums" / "metadata"
  if not path.exists():
    return None
  pretrained.load(work, STEPS)  # raises if an array differs
  return json.loads(path.read_text())


def records_once(work):
  lines = (work / "metrics.jsonl").read_text().splitlines()
  keys = [(json.loads(l)["step"], tuple(sorted(json.loads(l)))) for l in lines]
  steps = [s for s, _ in keys]
  return len(keys) == len(set(keys)) and steps == sorted(steps)


def complete(work, cache):
  """Relaunches until the run completes; (exit codes, last stderr lines)."""
  codes, lasts = [], []
  for _ in range(3):
    proc = launch(work, cache)
    _, err = proc.communicate()
    codes.append(proc.returncode)
    lasts.append(err.strip().splitlines()[-1] if err.strip() else "")
    if proc.returncode == 0:
      break
  return codes, lasts


def disturb(work, cache, signum, when):
  """Starts a run and sends `signum` after `when` seconds of training, or
  as soon as the path glob `when` matches in the workdir."""
  proc = launch(work, cache)
  for line in proc.stderr:  # training has started at the first step's line
    if "First step" in line:
      break
  if isinstance(when, str):
    while not list(work.glob(when)) and proc.poll() is None:
      time.sleep(0.002)
  else:
    time.sleep(when)
  proc.send_signal(signum)
  _, err = proc.communicate()
  lines = err.strip().splitlines() or [""]
  if signum == signal.SIGKILL:
    steps = re.findall(r"step (\d+)/\d+ \|", err)
    return proc.returncode, (f"(killed; last logged step {steps[-1]})"
                             if steps else "(killed before a logged step)")
  return proc.returncode, lines[-1]


def corrupt(work, how, rng):
  steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir()
                 if p.name.isdigit())
  files = sorted((work / "checkpoints" / str(steps[-1]) / "state").glob(
      "ocdbt.process_*/d/*"), key=lambda f: f.stat().st_size)
  f = files[-1]
  data = bytearray(f.read_bytes())
  if how == "flip one bit":
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
  elif how == "4 KiB of random bytes":
    i = rng.randrange(max(1, len(data) - 4096))
    data[i:i + 4096] = rng.randbytes(min(4096, len(data) - i))
  else:  # truncate
    data = data[:len(data) // 2]
  f.write_bytes(bytes(data))
  return steps[-1]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--cache_dir", default=os.path.expanduser(
      "~/.cache/mlm_jax"))
  parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
  args = parser.parse_args()
  rng = random.Random(0)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="mlm_jax_trials_"))
  reference = tmp / "reference"
  codes, _ = complete(reference, args.cache_dir)
  assert codes == [0], codes
  want = final_checksums(reference)
  started = time.time()
  proc = launch(tmp / "timing", args.cache_dir)
  proc.communicate()
  run_seconds = time.time() - started
  trials = []
  moments = [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97]
  # Killed while an async save is being written, and right as the final
  # checkpoint appears.
  events = [("kill -9", signal.SIGKILL, "checkpoints/*.orbax-checkpoint-tmp*",
             "during an async save"),
            ("kill -9", signal.SIGKILL, "best/*.orbax-checkpoint-tmp*",
             "during the best checkpoint's save"),
            ("kill -9", signal.SIGKILL, f"checkpoints/{STEPS}",
             "as the final checkpoint appears")]
  plan = ([("kill -9", signal.SIGKILL, m) for m in moments]
          + [("SIGTERM", signal.SIGTERM, m) for m in moments[::2]]
          + [("SIGINT", signal.SIGINT, m) for m in moments[1::2]])
  train_seconds = max(run_seconds - 6, 2.0)  # minus start-up and compile
  plan = [(k, s, m * train_seconds, f"{m:.0%} of training")
          for k, s, m in plan] + events
  for i, (kind, signum, when, described) in enumerate(plan):
    work = tmp / f"trial_{i}"
    rc, last = disturb(work, args.cache_dir, signum, when)
    expected = {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}
    codes, _ = complete(work, args.cache_dir)
    ok = (rc in (expected[signum], 0) and codes[-1] == 0
          and final_checksums(work) == want and records_once(work))
    trials.append({"trial": kind, "at": described,
                   "first exit": rc, "relaunches": len(codes),
                   "nothing lost": ok, "stop line": last[:140]})
  for j, how in enumerate(["flip one bit", "4 KiB of random bytes",
                           "truncate"] * 2):
    work = tmp / f"corrupt_{j}"
    disturb(work, args.cache_dir, signal.SIGTERM, (0.5 + 0.1 * j) *
            train_seconds)
    step = corrupt(work, how, rng)
    codes, lasts = complete(work, args.cache_dir)
    aside = [p.name for p in (work / "checkpoints").iterdir()
             if ".damaged-" in p.name]
    ok = (codes[-1] == 0 and final_checksums(work) == want
          and records_once(work))
    trials.append({"trial": f"corrupt: {how}", "at": f"checkpoint {step}",
                   "first exit": codes[0], "relaunches": len(codes),
                   "nothing lost": bool(ok),
                   "stop line": f"moved aside: {', '.join(aside)}" if aside
                   else "not damage: the bytes hit are not referenced (the "
                        "restored arrays match their checksums)"})
  lost = [t for t in trials if not t["nothing lost"]]
  rows = "\n".join(f"| {t['trial']} | {t['at']} | {t['first exit']} | "
                   f"{t['relaunches']} | {'yes' if t['nothing lost'] else 'NO'}"
                   f" | {t['stop line'].replace('|', '/')} |" for t in trials)
  pathlib.Path(args.output).write_text(f"""# Reliability trials

Written by `python tools/reliability_trials.py` on
{datetime.date.today().isoformat()}: **{len(trials)} trials, {len(trials) - len(lost)} with nothing
lost.** A tiny run of {STEPS} steps (checkpoints every 50, async)
is disturbed, then relaunched until it completes; "nothing lost" means its
final parameters and optimizer state are bitwise those of an uninterrupted
run (the checksums recorded with the final checkpoint are equal, and its
arrays, restored, match them), and metrics.jsonl holds every record once,
in order. A corrupted byte can land in bytes of an OCDBT file that no
array refers to (superseded b-tree nodes); that is not damage, and the run
rightly resumes from that checkpoint. Moments are fractions of
the training time after the first step ({train_seconds:.1f} s here; a
loaded machine makes them earlier in steps), or events in the workdir.

| trial | when | first exit | launches to finish | nothing lost | last line of the stopped run |
| --- | --- | --- | --- | --- | --- |
{rows}
""")
  print(f"{len(trials) - len(lost)} of {len(trials)} trials lost nothing; "
        f"{args.output}")


if __name__ == "__main__":
  main()
