"""The progress bar and the run summaries."""
import io
import json

from mlm_jax import console
from mlm_jax import metrics


class _Tty(io.StringIO):
  def isatty(self):
    return True


def test_bar_draws_on_a_terminal_and_clears_before_log_lines(monkeypatch):
  monkeypatch.setenv("TERM", "xterm")
  out = _Tty()
  with console.Progress(0, 10, stream=out, min_interval_s=0) as bar:
    bar.update(1)
    bar.report({"loss": 6.25, "tokens_per_s": 51234.0, "lr": 1e-3})
    bar.update(2)
    text = out.getvalue()
    assert "step 2/10 [####" in text and "loss 6.25" in text
    assert "51,234 tokens/s" in text and "ETA" in text
    bar.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_nothing_is_drawn_in_a_file():
  out = io.StringIO()
  with console.Progress(0, 10, stream=out, min_interval_s=0) as bar:
    for step in range(1, 11):
      bar.update(step)
  assert out.getvalue() == ""


def test_eta_from_the_rate_since_the_first_step():
  bar = console.Progress(0, 100, stream=io.StringIO())
  bar._clock = (1, 10.0)  # step 1 done at t=10 s
  assert bar.eta_seconds(11, 20.0) == 89.0  # 1 step/s, 89 to go
  bar.pause_clock(5.0)  # 5 s of evaluation do not slow the rate
  assert bar.eta_seconds(11, 25.0) == 89.0


def test_duration():
  assert [console.duration(s) for s in (7, 242, 3909)] == [
      "7s", "4:02", "1:05:09"]


def test_end_summary_names_the_results(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in [
      {"step": 4, "eval_loss": 6.1}, {"step": 8, "eval_loss": 5.9},
      {"step": 12, "eval_loss": 6.0}, {"step": 12, "loss": 5.0}]))
  assert metrics.best_eval(path) == (8, 5.9)
  lines = console.end_summary(workdir="/w", last_checkpoint="/w/c/12",
                              best=metrics.best_eval(path),
                              metrics_path=str(path), events_dir="/w")
  assert lines[1:4] == ["  last checkpoint: /w/c/12",
                        "  best held-out loss: 5.9 at step 8",
                        f"  metrics: {path}"]
  assert lines[-1] == "  TensorBoard: tensorboard --logdir /w"


def test_jsonl_writer_records_a_step_once_across_resumes(tmp_path):
  path = tmp_path / "metrics.jsonl"
  w = metrics.JsonlWriter(path)
  assert w.write(8, {"loss": 1.0})
  assert w.write(8, {"eval_loss": 2.0})
  w = metrics.JsonlWriter(path, resume_step=8)  # a finished run, resumed
  assert not w.write(8, {"eval_loss": 2.0})
  assert [json.loads(l) for l in path.read_text().splitlines()] == [
      {"step": 8, "loss": 1.0}, {"step": 8, "eval_loss": 2.0}]
