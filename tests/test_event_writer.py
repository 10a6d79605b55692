"""TensorBoard event files, read back with TensorBoard's own reader."""
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from mlm_jax import event_writer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def read_run(logdir, run):
  """{tag: [(step, value), ...]} of one run, as TensorBoard loads it."""
  acc = event_accumulator.EventAccumulator(str(logdir / run))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}


def read_run_as_tensors(logdir, run):
  """The same through the reader of `tensorboard --load_fast=false`."""
  acc = plugin_event_accumulator.EventAccumulator(str(logdir / run))
  acc.Reload()
  return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                for e in acc.Tensors(tag)]
          for tag in acc.Tags()["tensors"]}


def next_second():
  """Waits for the wall clock's next second. TensorBoard reads a run's event
  files in name order: time in seconds, host, pid, then a counter of the
  process, which sorts as text ("10" before "9"); two writers of one process
  within a second could be read in the wrong order (a resumed run is another
  process, seconds later)."""
  time.sleep(1.01 - time.time() % 1)


def test_train_and_eval_keys_become_two_runs_with_the_same_tags(tmp_path):
  with event_writer.EventWriter(tmp_path) as writer:
    writer.write_scalars(100, {"loss": 7.25, "mlm_accuracy": 0.0625,
                               "lr": 1e-3, "tokens_per_s": 50_000.0})
    writer.write_scalars(200, {"loss": 6.5, "mlm_accuracy": 0.125,
                               "lr": 5e-4, "tokens_per_s": 52_000.0})
    writer.write_scalars(200, {"eval_loss": 6.25,
                               "eval_mlm_accuracy": 0.25})
  train, evaluation = read_run(tmp_path, "train"), read_run(tmp_path, "eval")
  assert sorted(train) == ["loss", "lr", "mlm_accuracy", "tokens_per_s"]
  assert train["loss"] == [(100, 7.25), (200, 6.5)]
  assert train["mlm_accuracy"] == [(100, 0.0625), (200, 0.125)]
  assert [s for s, _ in train["lr"]] == [100, 200]
  np.testing.assert_allclose([v for _, v in train["lr"]], [1e-3, 5e-4],
                             rtol=1e-6)  # stored as float32
  assert train["tokens_per_s"] == [(100, 50_000.0), (200, 52_000.0)]
  assert evaluation == {"loss": [(200, 6.25)], "mlm_accuracy": [(200, 0.25)]}


def test_run_and_tag():
  assert event_writer.run_and_tag("eval_loss") == ("eval", "loss")
  assert event_writer.run_and_tag("eval_nsp_accuracy") == (
      "eval", "nsp_accuracy")
  assert event_writer.run_and_tag("loss") == ("train", "loss")
  assert event_writer.run_and_tag("first_step_seconds") == (
      "train", "first_step_seconds")
  assert event_writer.run_and_tag("eval_") == ("train", "eval_")


def test_numpy_and_jax_scalars_are_written_and_the_rest_skipped(tmp_path):
  import jax.numpy as jnp
  with event_writer.EventWriter(tmp_path) as writer:
    skipped = writer.write_scalars(3, {
        "loss": np.float32(2.5), "steps": np.int64(7), "grad_norm": jnp.array(
            0.75), "nan": float("nan"), "inf": np.inf, "name": "bert",
        "vector": np.ones(2), "none": None})
  assert skipped == ["nan", "inf", "name", "vector", "none"]
  assert read_run(tmp_path, "train") == {
      "loss": [(3, 2.5)], "steps": [(3, 7.0)], "grad_norm": [(3, 0.75)]}
  assert not (tmp_path / "eval").exists()  # no eval value, no eval run


def test_disabled_writer_writes_nothing(tmp_path):
  with event_writer.EventWriter(tmp_path / "tb", enabled=False) as writer:
    assert writer.write_scalars(1, {"loss": 1.0, "eval_loss": 2.0}) == []
  assert not (tmp_path / "tb").exists()


def test_flush_makes_events_readable_before_close(tmp_path):
  writer = event_writer.EventWriter(tmp_path, flush_secs=3600)
  writer.write_scalars(5, {"loss": 3.0})
  writer.flush()
  assert read_run(tmp_path, "train") == {"loss": [(5, 3.0)]}
  writer.close()
  with pytest.raises(ValueError, match="closed; create a new one"):
    writer.write_scalars(6, {"loss": 2.0})


@pytest.mark.parametrize("read", [read_run, read_run_as_tensors])
def test_resumed_run_hides_steps_after_its_checkpoint(tmp_path, read):
  # The first run logs steps 100-300 but its last checkpoint is step 200;
  # the resumed run restarts from 200 and logs 300 again, differently.
  with event_writer.EventWriter(tmp_path) as writer:
    for step, loss in [(100, 5.0), (200, 4.0), (300, 3.0)]:
      writer.write_scalars(step, {"loss": loss, "eval_loss": loss + 1})
  next_second()
  with event_writer.EventWriter(tmp_path, resume_step=200) as writer:
    writer.write_scalars(300, {"loss": 3.5, "eval_loss": 4.5})
  assert read(tmp_path, "train") == {
      "loss": [(100, 5.0), (200, 4.0), (300, 3.5)]}
  assert read(tmp_path, "eval") == {
      "loss": [(100, 6.0), (200, 5.0), (300, 4.5)]}


@pytest.mark.parametrize("read", [read_run, read_run_as_tensors])
def test_fresh_run_replaces_an_earlier_one_in_its_logdir(tmp_path, read):
  with event_writer.EventWriter(tmp_path) as writer:
    writer.write_scalars(100, {"loss": 5.0})
    writer.write_scalars(200, {"loss": 4.0})
  next_second()
  with event_writer.EventWriter(tmp_path) as writer:
    writer.write_scalars(100, {"loss": 6.0})
  assert read(tmp_path, "train") == {"loss": [(100, 6.0)]}


def test_importing_the_writer_does_not_import_tensorflow():
  code = ("import sys; import mlm_jax.event_writer; "
          "print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, cwd=ROOT)
  assert out.stdout.strip() == "False"
