"""Curves of runs from their metrics.jsonl, and the plot launcher."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mlm_jax import plot

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_workdir(path, accuracies=("mlm_accuracy",), steps=(100, 200, 300)):
  """A workdir whose metrics.jsonl looks like a short training run's."""
  path.mkdir(parents=True)
  lines = [{"step": 1, "first_step_seconds": 2.5}]
  for i, step in enumerate(steps):
    lines.append({"step": step, "loss": 7.0 - i, "lr": 1e-3,
                  **{k: 0.1 * (i + 1) for k in accuracies}})
  lines.append({"step": steps[-1], "eval_loss": 5.5,
                **{f"eval_{k}": 0.25 for k in accuracies}})
  text = "".join(json.dumps(line) + "\n" for line in lines)
  (path / "metrics.jsonl").write_text(text + '{"step": 400, "loss"')  # crash
  return path


def png_size(path):
  """(width, height) of a PNG file, checking its signature and header."""
  data = pathlib.Path(path).read_bytes()
  assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
  return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_two_runs_make_a_png_with_a_panel_per_metric(tmp_path):
  a = make_workdir(tmp_path / "a")
  b = make_workdir(tmp_path / "b", accuracies=("mlm_accuracy", "nsp_accuracy"))
  out = plot.plot_runs([a, b], tmp_path / "out" / "curves.png")
  assert out == tmp_path / "out" / "curves.png"
  # Three panels side by side at 5 x 3.6 inches and 100 dpi.
  assert png_size(out) == (1500, 360)
  assert out.stat().st_size > 10_000


def test_series_keeps_numbers_in_step_order_and_skips_the_rest():
  records = [{"step": 200, "loss": 2.0, "note": "x", "nan": float("nan")},
             {"step": 100, "loss": 3.0, "flag": True}]
  assert plot.series(records) == {"loss": ([100, 200], [3.0, 2.0])}


def test_read_metrics_skips_a_line_cut_off_by_a_crash(tmp_path):
  records = plot.read_metrics(make_workdir(tmp_path / "run"))
  assert [r["step"] for r in records] == [1, 100, 200, 300, 300]


def test_panels_are_loss_then_every_accuracy_train_or_eval():
  runs = [{"loss": ([1], [1.0]), "mlm_accuracy": ([1], [0.1]), "lr": ([1], [1.0])},
          {"eval_sop_accuracy": ([1], [0.5]), "eval_loss": ([1], [2.0])}]
  assert plot.panel_keys(runs) == ["loss", "mlm_accuracy", "sop_accuracy"]


def test_labels_are_folder_names_told_apart_by_their_parents(tmp_path):
  assert plot.run_labels([tmp_path / "a", tmp_path / "b/"]) == ["a", "b"]
  assert plot.run_labels([tmp_path / "x" / "run", tmp_path / "y" / "run"]) == [
      "x/run", "y/run"]


def test_workdir_without_metrics_is_a_one_line_error(tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=r"empty/metrics.jsonl: no such file; pass a workdir"):
    plot.plot_runs([tmp_path / "empty"], tmp_path / "c.png")
  assert not (tmp_path / "c.png").exists()


def test_workdir_with_nothing_to_draw_says_so(tmp_path):
  (tmp_path / "new").mkdir()
  (tmp_path / "new" / "metrics.jsonl").write_text(
      '{"step": 1, "first_step_seconds": 2.0}\n')
  with pytest.raises(ValueError, match="no loss or accuracy logged yet"):
    plot.plot_runs([tmp_path / "new"], tmp_path / "c.png")


def run_launcher(*args):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "experiments/plot.py", *args],
                        capture_output=True, text=True, cwd=ROOT, env=env)


def test_launcher_plots_workdirs_given_as_arguments_or_flag(tmp_path):
  a, b = make_workdir(tmp_path / "a"), make_workdir(tmp_path / "b")
  out = tmp_path / "curves.png"
  proc = run_launcher(str(a), f"--workdirs={b}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == str(out)
  assert png_size(out) == (1000, 360)


def test_launcher_reports_a_missing_metrics_file_in_one_line(tmp_path):
  proc = run_launcher(str(tmp_path / "nope"), f"--out={tmp_path / 'c.png'}")
  assert proc.returncode == 1
  assert proc.stderr.strip() == (
      f"error: {tmp_path / 'nope' / 'metrics.jsonl'}: no such file; pass a "
      "workdir that experiments/pretrain.py has trained in (it writes "
      "metrics.jsonl there at every log step).")
