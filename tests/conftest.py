"""Test set-up: every test process sees 4 CPU devices; no stray temp dirs.

The library never changes jax.config at import; tests do it here, once,
before any backend is initialised, so that pmap/jit-over-mesh code runs on
several (forced host) devices on a CPU-only machine.
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def no_stray_tfds_temp_dirs(tmp_path_factory):
  """The session's temp dir is one of its own, left with no `tmp*tfds`.

  tfds leaves an empty one per builder of an unprepared dataset, unless the
  data package prevents it; a temp dir of our own also keeps this check
  blind to other processes' dirs.
  """
  temp = tmp_path_factory.mktemp("tempdir")
  previous, tempfile.tempdir = tempfile.tempdir, str(temp)
  yield
  tempfile.tempdir = previous
  stray = sorted(path.name for path in temp.glob("tmp*tfds"))
  assert not stray, (f"Tests left {len(stray)} tfds temporary directories "
                     f"in {temp}; make the tfds builders that made them "
                     "clean up (as offline_tfds._LocalDatasetInfo, "
                     "tfds_source._no_stray_temp_dirs).")


@pytest.fixture(scope="session")
def _compilation_cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_compilation_cache")


@pytest.fixture(scope="module")
def compilation_cache(_compilation_cache_dir):
  """XLA's persistent compilation cache, on for the module that asks.

  For modules that compile the same program more than once by design (a
  run and its resume, a layout whose second step recompiles): the second
  compile loads the first's executable (~0.2 s instead of 3-5 s on 2
  cores). A load still reports a backend compile event, so tests that count
  compilations see it. Off again after the module; subprocesses never use
  it. One directory for the session, so modules also share programs.
  """
  from jax.experimental.compilation_cache import compilation_cache as cc
  settings = {"jax_compilation_cache_dir": str(_compilation_cache_dir),
              # Cheap programs are not worth a file.
              "jax_persistent_cache_min_compile_time_secs": 0.5}
  previous = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  cc.reset_cache()
  yield
  for name, value in previous.items():
    jax.config.update(name, value)
  cc.reset_cache()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """A data cache holding the offline corpus, built once per test session."""
  from mlm_jax.data import offline
  path = tmp_path_factory.mktemp("mlm_jax_cache")
  offline.offline_corpus(path / "corpora")
  return path


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory, cache_dir):
  """A tiny pre-training workdir (checkpoints, best, tokenizer), trained
  once per session in process, for the tests that use a checkpoint."""
  from mlm_jax import train
  workdir = tmp_path_factory.mktemp("pretrained") / "run"
  train.train_and_evaluate(tiny_pretraining_config(cache_dir), str(workdir))
  return workdir


def tiny_pretraining_config(cache_dir):
  """The config of `pretrained_run` (tests/test_reliability.py's TINY
  overrides give the same from the command line)."""
  import sys
  sys.path.insert(0, os.path.dirname(__file__))
  from configs_loader import load_config
  cfg = load_config("size=tiny,runlocal")
  cfg.data.cache_dir = str(cache_dir)
  cfg.vocab_size, cfg.tokenizer.model_type = 400, "bpe"
  cfg.data.max_documents, cfg.data.seq_len = 300, 64
  cfg.train.batch_size, cfg.train.num_steps = 16, 60
  cfg.train.log_every, cfg.train.eval_every = 20, 30
  cfg.train.checkpoint_every, cfg.train.eval_batches = 30, 2
  cfg.optim.lr, cfg.optim.warmup_steps = 5e-3, 5
  return cfg
