"""The launchers' command line: --help from the config, one-line errors.

The launchers run in subprocesses as a user runs them. Each start imports
jax (seconds), so all invocations run once, two at a time, and the tests
assert on their saved output.
"""
import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

from configs_loader import config_module, load_config
from mlm_jax import cli
from mlm_jax import config_help

ROOT = pathlib.Path(__file__).parents[1]
TINY = "configs/bert.py:size=tiny,runlocal"

RUNS = {
    "help": ("pretrain", "--help"),
    "help_tiny": ("pretrain", "--config", TINY, "--help"),
    "h_electra": ("benchmark_data", "-h",
                  "--config=configs/bert.py:objective=electra"),
    "no_flags": ("pretrain",),
    "config_only": ("pretrain", "--config", "configs/bert.py"),
    "prepare_no_flags": ("prepare_data",),
    "bench_config_only": ("benchmark", "--config", TINY),
    "help_bad_variant": ("prepare_data", "--config",
                         "configs/bert.py:size=huge", "--helpshort"),
    "bad_variant": ("pretrain", "--config", "configs/bert.py:size=huge",
                    "--workdir", "/nonexistent"),
    "override": ("pretrain", "--config", TINY, "--workdir", "/nonexistent",
                 "--config.host.allocator=bogus"),
}


def _run(launcher, *args):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
  return subprocess.run(
      [sys.executable, f"experiments/{launcher}.py", *args], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs():
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {k: pool.submit(_run, *a) for k, a in RUNS.items()}
    return {k: f.result() for k, f in futures.items()}


def _comment_above(field):
  """The comment line above `config.<field> = ...` in configs/bert.py."""
  lines = (ROOT / "configs" / "bert.py").read_text().splitlines()
  i = next(i for i, l in enumerate(lines)
           if l.strip().startswith(f"config.{field} = "))
  return lines[i - 1].strip()


def test_help_lists_flags_variants_and_fields_with_comments(runs):
  p = runs["help"]
  assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
  out = p.stdout
  # absl's help of the launcher's own flags comes first.
  assert "--workdir: Directory for checkpoints" in out
  assert out.index("--workdir:") < out.index("Config configs/bert.py:")
  # The config file's docstring and variants, with their choices.
  assert "--config configs/bert.py:size=tiny,runlocal   # CPU smoke" in out
  assert "  size=base        one of: tiny, mini, small, medium, base," in out
  assert "  runlocal=False\n" in out
  assert "objective=mlm    one of: mlm, nsp, sop, electra, prefix_lm" in out
  assert "masking=token    one of: token, whole_word, span" in out
  # Fields with their default and the comment above them in the config.
  assert f"  {_comment_above('optim.lr')}\n  optim.lr = 0.0001\n" in out
  assert f"  {_comment_above('optim.b1')}\n  optim.b1 = 0.9\n" \
      "  optim.b2 = 0.999\n  optim.eps = 1e-06\n" in out
  assert "\noptim:\n" in out and "\nmodel:\n" in out
  assert "  model.num_layers = 12\n" in out
  # Blocks defined in library modules, with the comments written there.
  assert ("flatter, so replacements are easier to spot.\n"
          "  objective.electra.temperature = 1.0\n") in out
  assert "  masking.span.max_length = 10\n" in out
  assert "without variants" not in out


def test_help_shows_the_values_of_the_variant(runs):
  p = runs["help_tiny"]
  assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
  out = p.stdout
  assert "Config configs/bert.py:size=tiny,runlocal:" in out
  assert "  size=tiny        default: base; one of:" in out
  assert "  runlocal=True    default: False\n" in out
  assert "  optim.lr = 0.002  # without variants: 0.0001\n" in out
  assert "  model.num_layers = 2  # without variants: 12\n" in out
  assert "  train.num_steps = 1600  # without variants: 1000000\n" in out
  # -h works too, on every launcher, with the variant's own values.
  p = runs["h_electra"]
  assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
  assert "--workdir: Where results go." in p.stdout
  assert "  objective=electra  default: mlm;" in p.stdout
  assert "  masking.mask_prob = 0.85  # without variants: 0.8\n" in p.stdout


@pytest.mark.parametrize("run, line", [
    ("no_flags", "error: --config and --workdir are required, e.g. --config "
     "configs/bert.py:size=tiny,runlocal --workdir /tmp/mlm_smoke"),
    ("config_only", "error: --workdir is required (directory for "
     "checkpoints, metrics and the tokenizer), e.g. --workdir /tmp/mlm_smoke"),
    ("prepare_no_flags", "error: --config is required (config file, with "
     "variants after ':'), e.g. --config configs/bert.py:size=tiny,runlocal"),
    ("bench_config_only", "error: --workdir is required (where "
     "benchmark.jsonl and benchmark.md go), e.g. --workdir /tmp/mlm_bench"),
    ("help_bad_variant", "error: --config: Unknown model size 'huge'; use "
     "one of tiny, mini, small, medium, base, large."),
    ("bad_variant", "error: --config configs/bert.py:size=huge: Unknown "
     "model size 'huge'; use one of tiny, mini, small, medium, base, "
     "large."),
    # An override still reaches the (locked) config and its checks.
    ("override", "error: config.host.allocator: unknown allocator 'bogus'; "
     "use one of mimalloc, jemalloc, tcmalloc, system."),
])
def test_errors_are_one_line(runs, run, line):
  p = runs[run]
  assert (p.returncode, p.stdout, p.stderr) == (2, "", line + "\n")


@pytest.mark.parametrize("arg", [
    None, "size=tiny,runlocal,objective=electra", "masking=span,bench"])
def test_every_field_has_a_comment(arg):
  comments = config_help.field_comments(config_module().get_config)
  leaves = config_help.leaves(load_config(arg))
  assert [f for f in leaves if not comments.get(f)] == []


def test_missing_flags_message():
  assert cli.missing_flags({"workdir": ("Where results go.", "/tmp/w")}) == (
      "--workdir is required (where results go), e.g. --workdir /tmp/w")
  assert cli.missing_flags({"a": ("", "1"), "b": ("", "2"), "c": ("", "3")}) \
      == "--a, --b and --c are required, e.g. --a 1 --b 2 --c 3"
