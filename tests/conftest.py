"""Test set-up: every test process sees 4 CPU devices.

The library never changes jax.config at import; tests do it here, once,
before any backend is initialised, so that pmap/jit-over-mesh code runs on
several (forced host) devices on a CPU-only machine.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  """A data cache holding the offline corpus, built once per test session."""
  from mlm_jax.data import offline
  path = tmp_path_factory.mktemp("mlm_jax_cache")
  offline.offline_corpus(path / "corpora")
  return path
