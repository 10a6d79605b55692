"""Bad inputs across the launchers, and signals sent to real runs.

The catalogue: each case is a launcher command line with one thing wrong.
Each must end with one line on stderr naming the problem (the last thing
printed, no traceback), a known exit status (2: the command line or config,
1: something that happened while running), and leave the workdir, its
checkpoints and the data cache as they were. The cases run in children
forked from one process that has imported the library (`launcher_forks`):
the launcher code is the real one, the interpreter start is shared.
The README's troubleshooting section lists the same cases.
"""
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

from mlm_jax import workdir as workdir_lib

ROOT = pathlib.Path(__file__).parents[1]
PRETRAIN = str(ROOT / "experiments" / "pretrain.py")
BERT = f"{ROOT / 'configs' / 'bert.py'}:size=tiny,runlocal"
# The config of conftest's `pretrained_run`, as overrides.
TINY = ["--config.vocab_size=400", "--config.tokenizer.model_type=bpe",
        "--config.data.max_documents=300", "--config.data.seq_len=64",
        "--config.train.batch_size=16", "--config.train.num_steps=60",
        "--config.train.log_every=20", "--config.train.eval_every=30",
        "--config.train.checkpoint_every=30", "--config.train.eval_batches=2",
        "--config.optim.lr=5e-3", "--config.optim.warmup_steps=5"]


@dataclasses.dataclass
class Case:
  name: str
  argv: list
  rc: int
  last_line: str          # regex the last stderr line must match
  unchanged: list         # paths that must be as they were
  fsize: int | None = None


def snapshot(path):
  """{relative file: (size, mtime)} under `path` (the lock file aside: a
  run that takes the lock writes its pid there)."""
  path = pathlib.Path(path)
  if not path.exists():
    return None
  if path.is_file():
    return (path.stat().st_size, path.stat().st_mtime_ns)
  return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(path.rglob("*"))
          if p.is_file() and p.name != workdir_lib.LOCK}


def run_cases(cases):
  payload = json.dumps([{"argv": c.argv, "fsize": c.fsize} for c in cases])
  proc = subprocess.run(
      [sys.executable, str(ROOT / "tests" / "launcher_forks.py")],
      input=payload, capture_output=True, text=True, timeout=900,
      env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout)


def catalogue(tmp, cache, pretrained):
  """The cases, with what they need made under `tmp`."""
  pre = [PRETRAIN, "--config", BERT, f"--config.data.cache_dir={cache}",
         *TINY]

  def copy(name):
    target = tmp / name
    shutil.copytree(pretrained, target)
    return target

  def files_run(corpus, *extra):
    work = tmp / f"files_{len(list(tmp.iterdir()))}"
    return [*pre, "--workdir", str(work), "--config.data.source=files",
            f"--config.data.files={corpus}", *extra], work

  a_file = tmp / "a_file"
  a_file.write_text("not a directory\n")
  empty = tmp / "empty.txt"
  empty.write_text("\n  \n")
  binary = tmp / "program.txt"
  binary.write_bytes(pathlib.Path(sys.executable).resolve().read_bytes()[:65536])
  small = tmp / "small.txt"
  small.write_text("A short corpus of a few words.\nIt has two lines.\n")
  not_data = tmp / "not_data"
  not_data.mkdir()
  (not_data / "notes.txt").write_text("mine\n")
  garbage = tmp / "garbage.model"
  garbage.write_bytes(b"\x00not a sentencepiece model" * 10)
  other_tok = copy("other_tokenizer")
  (other_tok / "tokenizer.model").write_bytes(garbage.read_bytes())
  damaged = copy("all_damaged")
  for step_dir in (damaged / "checkpoints").iterdir():
    for f in (step_dir / "state").glob("ocdbt.process_*/d/*"):
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  locked = copy("locked")
  fresh = tmp / "fresh"
  ckpts = lambda w: [w / "checkpoints", w / "best"]  # noqa: E731

  cases = [
      Case("zero log interval", [*pre, "--workdir", str(fresh),
           "--config.train.log_every=0"], 2,
           r"config\.train\.log_every: 0 is not positive", [fresh]),
      Case("zero eval interval", [*pre, "--workdir", str(fresh),
           "--config.train.eval_every=0"], 2,
           r"config\.train\.eval_every: 0 is not positive", [fresh]),
      Case("negative max_to_keep", [*pre, "--workdir", str(fresh),
           "--config.train.max_to_keep=-1"], 2,
           r"config\.train\.max_to_keep: -1 is negative", [fresh]),
      Case("batch not divisible by the devices", [*pre, "--workdir",
           str(fresh), "--config.train.batch_size=6"], 2,
           r"config\.train\.batch_size: 6 is not divisible by the 4 devices; "
           r"use a multiple of 4\.$", [fresh]),
      Case("unknown config field", [*pre, "--workdir", str(fresh),
           "--config.train.lr=1"], 2, r"has no field 'lr'", [fresh]),
      Case("wrong type of value", [*pre, "--workdir", str(fresh),
           "--config.train.batch_size=many"], 2,
           r"--config\.train\.batch_size", [fresh]),
      Case("missing config file", [PRETRAIN, "--config",
           str(tmp / "nope.py"), "--workdir", str(fresh)], 2,
           r"cannot load the config file", [fresh]),
      Case("unknown variant", [PRETRAIN, "--config",
           f"{ROOT / 'configs' / 'bert.py'}:size=huge", "--workdir",
           str(fresh)], 2, r"size", [fresh]),
      Case("missing --workdir", [*pre], 2, r"--workdir is required", []),
      Case("workdir is a file", [*pre, "--workdir", str(a_file)], 2,
           r"is a file, not a directory", [a_file]),
      Case("read-only workdir", [*pre, "--workdir", "/proc/self"], 2,
           r"/proc/self is not writable", []),
      Case("workdir cannot be created", [*pre, "--workdir",
           "/proc/mlm_jax_test/run"], 2, r"cannot be created", []),
      Case("corpus path missing", files_run(tmp / "missing_*.txt")[0], 2,
           r"missing_\*\.txt", [cache]),
      Case("empty corpus file", files_run(empty)[0], 2,
           r"empty\.txt holds no text", [cache, empty]),
      Case("binary corpus file", files_run(binary)[0], 2,
           r"program\.txt is not text", [cache, binary]),
      Case("vocabulary too large for the corpus",
           files_run(small, "--config.vocab_size=5000")[0], 2,
           r"config\.vocab_size: 5000 is more than this corpus supports",
           [cache, small]),
      Case("data.dir not a prepared dataset", [*pre, "--workdir", str(fresh),
           f"--config.data.dir={not_data}"], 2,
           r"not_data is not empty and has no manifest\.json",
           [not_data, fresh]),
      Case("tokenizer path missing", [*pre, "--workdir", str(fresh),
           f"--config.tokenizer.path={tmp / 'none.model'}"], 2,
           r"none\.model", [fresh, cache]),
      Case("tokenizer file not a model", [*pre, "--workdir", str(fresh),
           f"--config.tokenizer.path={garbage}"], 2, r"garbage\.model",
           [fresh, cache, garbage]),
      Case("workdir trained with another vocabulary", [*pre, "--workdir",
           str(other_tok)], 2, r"differs from the tokenizer of this config",
           [other_tok, cache]),
      Case("resume with another model size", [*pre, "--workdir",
           str(copy("wider")), "--config.model.hidden_size=64"], 2,
           r"model\.hidden_size: 128 -> 64.*--config\.model\.hidden_size=128",
           [tmp / "wider", cache]),
      Case("resume with the other optimizer layout", [*pre, "--workdir",
           str(copy("unfused")), "--config.optim.fused=False"], 2,
           r"optim\.fused: True -> False", [tmp / "unfused", cache]),
      Case("every checkpoint damaged", [*pre, "--workdir", str(damaged)], 1,
           r"No checkpoint in .* could be restored", [damaged, cache]),
      Case("workdir in use by another run", [*pre, "--workdir",
           str(locked)], 2, rf"in use by another run \(pid {os.getpid()} ",
           [locked, cache]),
      Case("non-finite loss", [*pre, "--workdir", str(copy("diverges")),
           "--config.train.num_steps=80", "--config.optim.lr=1e9"], 1,
           r"Non-finite training metrics at step 80.*No checkpoint was "
           r"written", [*ckpts(tmp / "diverges"), cache]),
      Case("disk full at a save", [*pre, "--workdir", str(copy("full")),
           "--config.train.num_steps=90", "--config.train.checkpoint_every=2"],
           1, r"Saving the checkpoint of step 62 to .* failed: File too large",
           [*ckpts(tmp / "full"), cache], fsize=200_000),
      Case("evaluate: no such workdir", [str(ROOT / "experiments" /
           "evaluate.py"), "--workdir", str(tmp / "none")], 2,
           r"none", []),
      Case("evaluate: no such step", [str(ROOT / "experiments" /
           "evaluate.py"), "--workdir", str(pretrained), "--checkpoint=999",
           f"--cache_dir={cache}"], 2, r"999", [pretrained, cache]),
      Case("fill-mask: text without [MASK]", [str(ROOT / "experiments" /
           "fill_mask.py"), "--workdir", str(pretrained), "--text",
           "no mask here"], 2, r"\[MASK\]", [pretrained]),
      Case("fine-tune: no such checkpoint", [str(ROOT / "experiments" /
           "finetune.py"), "--config",
           f"{ROOT / 'configs' / 'finetune.py'}:runlocal",
           f"--config.init.checkpoint={tmp / 'none'}", "--workdir",
           str(tmp / "ft")], 2, r"none", [tmp / "ft"]),
      Case("fine-tune: task files missing", [str(ROOT / "experiments" /
           "finetune.py"), "--config",
           f"{ROOT / 'configs' / 'finetune.py'}:task=files,runlocal",
           f"--config.init.checkpoint={pretrained}",
           f"--config.task.path_or_name={tmp / 'task_{split}.csv'}",
           "--config.task.kind=classification",
           "--workdir", str(tmp / "ft")], 2, r"task_", [tmp / "ft",
                                                        pretrained]),
      Case("prepare_data: corpus path missing", [str(ROOT / "experiments" /
           "prepare_data.py"), "--config", BERT,
           f"--config.data.cache_dir={cache}", "--config.data.source=files",
           f"--config.data.files={tmp / 'gone.txt'}"], 2, r"gone\.txt",
           [cache]),
  ]
  return cases, locked


def test_every_bad_input_is_one_line_and_changes_nothing(
    tmp_path, cache_dir, pretrained_run):
  cases, locked = catalogue(tmp_path, cache_dir, pretrained_run)
  assert len(cases) >= 25
  before = [[snapshot(p) for p in c.unchanged] for c in cases]
  with workdir_lib._lock(locked):  # pylint: disable=protected-access
    results = run_cases(cases)
  failures = []
  for case, result, snap in zip(cases, results, before):
    lines = result["stderr"].rstrip("\n").split("\n")
    problems = []
    if result["rc"] != case.rc:
      problems.append(f"exit status {result['rc']}, not {case.rc}")
    if not re.search(case.last_line, lines[-1]) or not lines[-1].startswith(
        "error: "):
      problems.append(f"last line {lines[-1][:300]!r}")
    if "Traceback" in result["stderr"]:
      problems.append("a traceback")
    if [snapshot(p) for p in case.unchanged] != snap:
      problems.append("changed: " + ", ".join(
          str(p) for p, s in zip(case.unchanged, snap) if snapshot(p) != s))
    if problems:
      failures.append(f"{case.name}: {'; '.join(problems)}\n"
                      f"{result['stderr'][-1500:]}")
  assert not failures, "\n\n".join(failures)
  # A fresh workdir that a failed start created is gone again.
  assert not (tmp_path / "fresh").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith("files_")]


LONG = ["--config.train.num_steps=100000", "--config.train.log_every=5",
        "--config.train.eval_every=50000",
        "--config.train.checkpoint_every=50000"]


class Launch:
  """pretrain.py in a real process; its stderr read line by line."""

  def __init__(self, work, cache, *extra):
    self.proc = subprocess.Popen(
        [sys.executable, PRETRAIN, "--config", BERT,
         f"--config.data.cache_dir={cache}", *TINY, *LONG, "--workdir",
         str(work), *extra], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XLA_FLAGS": ""},
        # SIGINT as in a foreground shell, even when the tests run as a
        # background job (which starts with SIGINT ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    self.lines = []

  def wait_for(self, pattern):
    """Reads stderr up to a line matching `pattern`; returns the match."""
    for line in self.proc.stderr:
      self.lines.append(line.rstrip("\n"))
      found = re.search(pattern, line)
      if found:
        return found
    raise AssertionError("\n".join(self.lines[-30:]))

  def finish(self):
    _, rest = self.proc.communicate(timeout=300)
    self.lines += rest.rstrip("\n").split("\n")
    return self.proc.returncode, self.lines[-1]


def logged_steps(work):
  return [json.loads(line)["step"] for line in
          (work / "metrics.jsonl").read_text().splitlines()
          if "loss" in json.loads(line)]


def test_signals_save_where_they_stop_and_the_run_resumes_there(
    tmp_path, cache_dir):
  work = tmp_path / "run"
  # Ctrl-C while training: the step is finished and saved.
  run = Launch(work, cache_dir)
  seen = int(run.wait_for(r"step (\d+)/100000 \| loss").group(1))
  run.proc.send_signal(signal.SIGINT)
  rc, last = run.finish()
  stopped = re.fullmatch(r"Stopped by SIGINT at step (\d+) of 100000: saved "
                         rf"{re.escape(str(work))}/checkpoints/(\d+); run the "
                         r"same command to resume from it\.", last)
  assert rc == 130 and stopped, "\n".join(run.lines[-20:])
  first = int(stopped.group(1))
  assert first == int(stopped.group(2)) >= seen
  assert not any("Traceback" in line for line in run.lines)
  # Relaunched: resumes at that step (none lost); SIGTERM (a preemption).
  run = Launch(work, cache_dir)
  assert int(run.wait_for(r"Resumed from the checkpoint of step (\d+)")
             .group(1)) == first
  seen = int(run.wait_for(r"step (\d+)/100000 \| loss").group(1))
  run.proc.send_signal(signal.SIGTERM)
  rc, last = run.finish()
  stopped = re.fullmatch(r"Stopped by SIGTERM at step (\d+) of 100000: saved "
                         r".*/checkpoints/(\d+); .*", last)
  assert rc == 143 and stopped, "\n".join(run.lines[-20:])
  second = int(stopped.group(1))
  assert second >= seen > first
  assert sorted(int(p.name) for p in (work / "checkpoints").iterdir()) == [
      first, second]
  # metrics.jsonl reads as one run: every log step once, in order.
  assert logged_steps(work) == list(range(5, second + 1, 5))


def test_a_signal_before_training_stops_at_once_and_leaves_nothing(
    tmp_path, cache_dir):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"Sentence number {i} of a corpus to prepare, "
                            f"with words {i * 7 % 13} and {i % 5}.\n"
                            for i in range(3000)))
  work = tmp_path / "run"
  cache = tmp_path / "cache"
  shutil.copytree(cache_dir / "corpora", cache / "corpora")
  before = snapshot(cache)
  run = Launch(work, cache, "--config.data.source=files",
               f"--config.data.files={corpus}", "--config.vocab_size=200")
  run.wait_for(r"Preparing")
  run.proc.send_signal(signal.SIGTERM)
  rc, last = run.finish()
  assert (rc, last) == (143, "Stopped by SIGTERM before training started; "
                             "nothing to save."), "\n".join(run.lines[-20:])
  assert not work.exists()
  assert snapshot(cache) == before  # no partial dataset, no temporaries


def test_a_preemption_notice_saves_and_stops_at_the_agreed_step(
    tmp_path, cache_dir, monkeypatch):
  """On several hosts JAX's preemption sync names the step to stop at
  (orbax's `reached_preemption`); here it is faked at step 7."""
  from conftest import tiny_pretraining_config  # pylint: disable=import-outside-toplevel
  from mlm_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from mlm_jax import interrupts  # pylint: disable=import-outside-toplevel
  from mlm_jax import train  # pylint: disable=import-outside-toplevel
  cfg = tiny_pretraining_config(cache_dir)
  monkeypatch.setattr(ckpt_lib.Checkpointer, "reached_preemption",
                      lambda self, step: step == 7)
  work = tmp_path / "run"
  with pytest.raises(interrupts.Interrupted) as info:
    train.train_and_evaluate(cfg, str(work))
  assert info.value.exit_code == 128 + signal.SIGTERM
  assert str(info.value) == (
      f"Stopped by JAX's preemption notice at step 7 of 60: saved "
      f"{work}/checkpoints/7; run the same command to resume from it.")
  assert [p.name for p in (work / "checkpoints").iterdir()] == ["7"]


def test_one_line_errors_and_the_verbosity_flag(monkeypatch, capsys):
  """`-v 1` (absl's verbosity) re-raises for the full traceback; otherwise
  one line and the exit status. (In process: no other thread may count.)"""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  from mlm_jax import cli  # pylint: disable=import-outside-toplevel
  from mlm_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(cli.threading, "active_count", lambda: 1)
  cases = [(ConfigError("config.x: bad; fix it."), 2),
           (FloatingPointError("Non-finite\nmetrics"), 1),
           (PermissionError(13, "Permission denied", "/w/metrics.jsonl"), 1)]
  for error, code in cases:
    with pytest.raises(SystemExit) as info:
      with cli.one_line_errors():
        raise error
    assert info.value.code == code
  lines = capsys.readouterr().err.splitlines()
  assert lines == ["error: config.x: bad; fix it.",
                   "error: Non-finite metrics",
                   "error: Permission denied: /w/metrics.jsonl; check the "
                   "path's permissions and free space."]
  logger = absl_logging.get_absl_logger()
  level = logger.level  # NOTSET in tests: restored as it was, not as -v 0
  absl_logging.set_verbosity(1)
  try:
    with pytest.raises(ConfigError):
      with cli.one_line_errors():
        raise ConfigError("config.x: bad; fix it.")
  finally:
    logger.setLevel(level)
  with pytest.raises(SystemExit) as info:  # a bug: traceback, then one line
    with cli.one_line_errors():
      raise KeyError("oops")
  err = capsys.readouterr().err
  assert info.value.code == 1 and "Traceback" in err
  assert err.splitlines()[-1].startswith("error: unexpected KeyError (a bug")
