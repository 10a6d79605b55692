"""The benchmark launcher's records and table."""
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from configs_loader import load_config
from mlm_jax import config as config_lib
from mlm_jax.bench import report

ROOT = pathlib.Path(__file__).resolve().parents[1]


QUICK = report.Settings(steps=2, repeats=2)

# The tests time the same small config's steps again (the baseline of the
# objectives is the first run's step): load them instead of compiling.
# Compile times are recorded, never checked, here.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def small_config():
  cfg = load_config("size=tiny,runlocal")
  cfg.train.batch_size, cfg.data.seq_len, cfg.vocab_size = 4, 32, 512
  return cfg


def quick(**settings):
  return dataclasses.replace(QUICK, **settings)


@pytest.fixture
def fixed_peak(monkeypatch):
  """A fixed matmul peak: measuring it (a 2048^3 matmul, best of 5, then
  sampled around every repeat) is not what these tests check."""
  from mlm_jax.bench import timing
  monkeypatch.setattr(timing, "matmul_peak_flops",
                      lambda n=2048, repeats=5: 1e11)


def record(kind, size, tokens_per_s, **fields):
  return {"kind": kind, "size": size, "batch_size": 4, "seq_len": 128,
          "allocator": "system", "step_median": 512 / tokens_per_s,
          "tokens_per_s": tokens_per_s, "lower_seconds": 1.0,
          "compile_seconds": 2.0, "mfu": 0.5, "peak_host_memory_gb": 1.0,
          "remat": "none", "accum_steps": 1, "scan_layers": False,
          "dtype": "float32", "dropout_rng": "hash", "parallel": "jit",
          "fused_adamw": True, **fields}


def rows(table):
  return [[c.strip() for c in line.split("|")[1:-1]]
          for line in table.splitlines()[2:]]


def test_ratios_are_against_our_plain_step_of_the_same_shape():
  table = report.format_table([
      record("ours", "tiny", 3000.0), record("flax", "tiny", 1000.0),
      record("ours", "base", 200.0, remat="full"),
      record("ours", "base", 250.0), record("torch", "base", 500.0),
      record("ours", "base", 125.0, accum_steps=4, scan_layers=True),
      record("ours", "base", 200.0, dropout_rng="threefry"),
      record("ours", "base", 200.0, parallel="pmap"),
      record("ours", "base", 200.0, fused_adamw=False)])
  assert [(r[0], r[2], r[3], r[-1]) for r in rows(table)] == [
      ("tiny", "ours", "", "1.00"), ("tiny", "flax", "", "3.00"),
      ("base", "ours", "remat=full", "1.25"), ("base", "ours", "", "1.00"),
      ("base", "torch", "", "0.50"),
      ("base", "ours", "accum=4 scan", "2.00"),
      ("base", "ours", "threefry dropout", "1.25"),
      ("base", "ours", "pmap", "1.25"),
      ("base", "ours", "optax adamw", "1.25")]


def test_the_mfu_bound_shows_where_it_was_measured():
  table = report.format_table([
      record("ours", "base", 250.0, mfu_bound=0.8125),
      record("flax", "base", 125.0, mfu_bound=None), record("ours", "tiny", 9.0)])
  assert [(r[2], r[9], r[10]) for r in rows(table)] == [
      ("ours", "0.50", "0.81"), ("flax", "0.50", ""), ("ours", "0.50", "")]


def test_run_appends_records_and_rewrites_the_table(tmp_path, fixed_peak):
  cfg = small_config()
  first = report.run(cfg, str(tmp_path), QUICK)
  assert rows(first)[0][:3] == ["tiny", "4 x 32", "ours"]
  cfg.model.remat = "full"
  report.run(cfg, str(tmp_path), QUICK)
  lines = (tmp_path / report.RECORDS).read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [r["remat"] for r in records] == ["none", "full"]
  assert all(r["kind"] == "ours" and len(r["step_times"]) == 2
             for r in records)
  table = rows((tmp_path / report.TABLE).read_text())
  assert [r[3] for r in table] == ["", "remat=full"]
  assert not list(tmp_path.glob("*.tmp"))


def test_unknown_peer_is_a_config_error():
  with pytest.raises(config_lib.ConfigError,
                     match=r"--peers: unknown peer\(s\) \['jax'\]"):
    report.measure(small_config(), quick(peers=("flax", "jax")))


def test_missing_peer_package_names_the_extra(monkeypatch):
  real = report.importlib.util.find_spec
  monkeypatch.setattr(report.importlib.util, "find_spec",
                      lambda m: None if m == "transformers" else real(m))
  with pytest.raises(config_lib.ConfigError,
                     match=r"needs transformers.*\.\[bench\]"):
    report.measure(small_config(), quick(peers=("flax",)))


def test_launcher_reports_a_bad_peer_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "experiments/benchmark.py",
       "--config=configs/bert.py:size=tiny,runlocal",
       "--peers=tf", "--config.host.allocator=system",
       f"--workdir={tmp_path}"], capture_output=True, text=True,
      check=False, cwd=ROOT)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --peers: unknown peer(s) ['tf']"), proc.stderr


def test_the_run_config_holds_no_benchmark_settings():
  # How to measure is the launcher's (its flags: report.Settings).
  for arg in ("size=tiny,runlocal", "size=small,bench"):
    assert "benchmark" not in load_config(arg)


def test_unknown_peer_allocator_is_a_config_error():
  with pytest.raises(config_lib.ConfigError,
                     match=r"--peer_allocator: unknown allocator "
                           r"'hoard'"):
    report.measure(small_config(),
                   quick(peers=("flax",), peer_allocator="hoard"))


def test_objectives_are_timed_interleaved_against_the_configs_own(
    tmp_path, fixed_peak):
  table = report.run(small_config(), str(tmp_path), quick(
      objectives=("span", "nsp", "electra"), repeats=3, steps=1))
  records = [json.loads(line) for line in
             (tmp_path / report.RECORDS).read_text().splitlines()]
  assert [r["objective"] for r in records] == ["mlm", "span", "nsp",
                                               "electra"]
  assert all(r["kind"] == "objective" and len(r["step_times"]) == 3
             for r in records)
  assert records[0]["cost"] == 1.0  # the baseline against itself
  # ELECTRA runs a generator besides BERT's encoder: more useful FLOPs.
  assert records[3]["flops_per_step"] > records[0]["flops_per_step"]
  assert [r[2] for r in rows(table)] == ["mlm", "span", "nsp", "electra"]


def test_objective_variants_set_what_each_needs():
  from mlm_jax.bench import objectives as bench_objectives
  cfg = small_config()
  cfg.masking.mask_prob = 0.85
  nsp = bench_objectives.variant(cfg, "nsp")
  assert nsp.objective.name == "nsp" and nsp.data.packing == "pairs"
  assert nsp.masking.mask_prob == 0.85
  span = bench_objectives.variant(cfg, "span")
  assert (span.objective.name, span.masking.strategy) == ("mlm", "span")
  lm = bench_objectives.variant(cfg, "causal_lm")
  assert lm.masking.mask_prob == 0.8  # the LMs mask nothing: defaults
  for name in ("nsp", "span", "causal_lm", "electra"):
    config_lib.validate(bench_objectives.variant(cfg, name), num_devices=4)
  with pytest.raises(config_lib.ConfigError,
                     match=r"--objectives: unknown \['bart'\]"):
    report.measure(small_config(), quick(objectives=("nsp", "bart")))


def test_finetune_times_the_classification_step(tmp_path, fixed_peak):
  from mlm_jax.bench import finetune
  from mlm_jax.bench import timing
  cfg = small_config()
  table = report.run(cfg, str(tmp_path), quick(finetune=True))
  (r,) = [json.loads(line) for line in
          (tmp_path / report.RECORDS).read_text().splitlines()]
  assert (r["kind"], r["objective"], r["num_labels"]) == (
      "ours", "finetune", finetune.NUM_LABELS)
  # The classification step's FLOPs (pooler and classifier, no MLM head),
  # and its own matmuls and optimizer in the bound.
  assert r["flops_per_step"] == timing.flops_per_step(cfg, finetune.task(cfg))
  assert r["flops_per_step"] < timing.flops_per_step(cfg)
  assert r["matmul_seconds"] > 0 and r["optimizer_seconds"] > 0
  assert [(row[2], row[3], row[-1]) for row in rows(table)] == [
      ("ours", "finetune", "1.00")]


def test_finetune_peers_run_as_fine_tuning(monkeypatch):
  calls = []

  def run_in_subprocess(kind, config, **kwargs):
    calls.append((kind, kwargs["finetune"]))
    return {"kind": kind, "allocator": "system", "tokens_per_s": 1.0}
  monkeypatch.setattr(report.peers, "run_in_subprocess", run_in_subprocess)
  # The peer is never imported here: run without the 'bench' extra too.
  real = report.importlib.util.find_spec
  monkeypatch.setattr(report.importlib.util, "find_spec",
                      lambda m: object() if m == "transformers" else real(m))
  records = report.measure(small_config(), quick(finetune=True,
                                                 peers=("flax",)))
  assert calls == [("ours", True), ("flax", True)]
  assert [(r["kind"], r["objective"]) for r in records] == [
      ("ours", "finetune"), ("flax", "finetune")]


def test_finetune_refuses_what_it_cannot_time():
  with pytest.raises(config_lib.ConfigError,
                     match=r"--finetune: .* use --peers=flax"):
    report.measure(small_config(), quick(finetune=True, peers=("torch",)))
  with pytest.raises(config_lib.ConfigError,
                     match=r"--finetune and --objectives"):
    report.measure(small_config(), quick(finetune=True, objectives=("nsp",)))


def test_repeated_runs_each_compare_within_themselves():
  # Two runs of ours then a peer, minutes apart: each peer line is against
  # the plain step of its own run, not the first run's.
  table = report.format_table([
      record("ours", "base", 300.0), record("flax", "base", 200.0),
      record("ours", "base", 200.0), record("flax", "base", 160.0)])
  assert [r[-1] for r in rows(table)] == ["1.00", "1.50", "1.00", "1.25"]
