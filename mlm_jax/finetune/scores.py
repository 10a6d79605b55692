"""Downstream scores, computed as their benchmarks report them.

GLUE reports accuracy, binary F1 of the positive class (MRPC, QQP),
Matthews correlation (CoLA), and Pearson and Spearman correlations (STS-B);
CoNLL named-entity recognition reports entity-level F1 as its `conlleval`
script counts entities. Each function here matches its reference on every
input (`sklearn.metrics`, `scipy.stats`, `conlleval`/`seqeval`), including
where a score is undefined: those give 0.0, as scikit-learn's do, so that a
degenerate model (one class predicted everywhere) scores 0, never NaN, and
comparisons of dev scores stay well defined.

Pure numpy on the host: predictions are gathered from the device first.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The scores `score` knows, by task kind.
SCORES = {
    "classification": ("accuracy", "f1", "macro_f1", "matthews"),
    "regression": ("pearson", "spearman"),
    "tagging": ("entity_f1", "entity_precision", "entity_recall"),
}


def accuracy(pred: Sequence, gold: Sequence) -> float:
  """The fraction of predictions equal to the gold labels."""
  pred, gold = _pair(pred, gold)
  return float(np.mean(pred == gold)) if len(gold) else 0.0


def f1(pred: Sequence, gold: Sequence, positive=1) -> float:
  """F1 of the `positive` class (GLUE's binary F1 for MRPC and QQP).

  0.0 when neither the predictions nor the gold labels hold it.
  """
  pred, gold = _pair(pred, gold)
  return _f1(pred == positive, gold == positive)


def macro_f1(pred: Sequence, gold: Sequence) -> float:
  """The unweighted mean of the F1 of every label in `pred` or `gold`."""
  pred, gold = _pair(pred, gold)
  labels = np.unique(np.concatenate([pred, gold]))
  if not len(labels):
    return 0.0
  return float(np.mean([_f1(pred == c, gold == c) for c in labels]))


def matthews(pred: Sequence, gold: Sequence) -> float:
  """Matthews correlation coefficient, for any number of classes.

  Gorodkin's multi-class form, as `sklearn.metrics.matthews_corrcoef`:
  0.0 when undefined (all predictions, or all gold labels, one class).
  """
  pred, gold = _pair(pred, gold)
  _, index = np.unique(np.concatenate([pred, gold]), return_inverse=True)
  n = len(gold)
  num_classes = int(index.max()) + 1 if n else 0
  confusion = np.zeros((num_classes, num_classes), np.float64)
  np.add.at(confusion, (index[n:], index[:n]), 1.0)  # [gold, pred]
  true_sum, pred_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  covariance = np.trace(confusion) * n - true_sum @ pred_sum
  pred_var = n * n - pred_sum @ pred_sum
  true_var = n * n - true_sum @ true_sum
  if pred_var * true_var == 0:
    return 0.0
  return float(covariance / np.sqrt(pred_var * true_var))


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
  """Pearson's correlation; 0.0 when either side is constant."""
  pred, gold = _pair(pred, gold, np.float64)
  if len(gold) < 2:
    return 0.0
  pred, gold = pred - pred.mean(), gold - gold.mean()
  denominator = np.sqrt((pred @ pred) * (gold @ gold))
  return float(pred @ gold / denominator) if denominator else 0.0


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
  """Spearman's rank correlation, tied values sharing their mean rank."""
  pred, gold = _pair(pred, gold, np.float64)
  return pearson(_ranks(pred), _ranks(gold))


def entity_f1(pred_tags: Sequence[Sequence[str]],
              gold_tags: Sequence[Sequence[str]]) -> dict[str, float]:
  """Entity-level micro precision, recall and F1, as `conlleval` counts them.

  Args:
    pred_tags, gold_tags: per sentence, its tags (`O`, `B-PER`, `I-PER`, ...
      in IOB2, IOB1 or IOBES); the two must agree in sentence lengths.

  Returns:
    {'precision', 'recall', 'f1'}: an entity counts as correct only when
    its type and both boundaries match. Entities are read as `conlleval`
    and `seqeval` (default mode) read them: one starts at B-X, S-X, or at
    I-X or E-X after O or after another type (so IOB1 works), and ends
    before O, B, S or another type, or after E or S; a sentence's end ends
    it.
  """
  if len(pred_tags) != len(gold_tags):
    raise ValueError(f"entity_f1: {len(pred_tags)} predicted and "
                     f"{len(gold_tags)} gold sentences.")
  found = correct = wanted = 0
  for i, (pred, gold) in enumerate(zip(pred_tags, gold_tags)):
    if len(pred) != len(gold):
      raise ValueError(f"entity_f1: sentence {i} has {len(pred)} predicted "
                       f"and {len(gold)} gold tags.")
    pred, gold = set(entities(pred)), set(entities(gold))
    found, wanted = found + len(pred), wanted + len(gold)
    correct += len(pred & gold)
  precision = correct / found if found else 0.0
  recall = correct / wanted if wanted else 0.0
  f = 2 * correct / (found + wanted) if found + wanted else 0.0
  return {"precision": precision, "recall": recall, "f1": f}


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """The entities of one sentence's tags: (type, first, last) word indices."""
  found = []
  prev_tag, prev_type, start = "O", "", 0
  for i, label in enumerate([*tags, "O"]):
    tag, _, type_ = label.partition("-")
    # A chunk is open whenever prev_tag is not O (conlleval's rules).
    if prev_tag != "O" and (
        prev_tag in ("E", "S") or tag in ("B", "S", "O")
        or type_ != prev_type):
      found.append((prev_type, start, i - 1))
    if tag in ("B", "S") or (tag != "O" and (
        prev_tag in ("O", "E", "S") or type_ != prev_type)):
      start = i
    prev_tag, prev_type = tag, type_
  return found


def score(kind: str, pred: Sequence, gold: Sequence,
          names: Sequence[str] | str) -> dict[str, float]:
  """The named scores of one task's predictions, {name: value}.

  Args:
    kind: 'classification', 'regression' or 'tagging'.
    pred, gold: labels (classification: label indices, where `f1`'s
      positive class is 1, the second label of the sorted vocabulary:
      '1' for GLUE); floats (regression); per sentence, its tag strings
      (tagging).
    names: some of SCORES[kind] (a sequence, or a comma-separated string).

  Raises:
    ValueError: an unknown kind, or a name that is not one of the kind's.
  """
  if kind not in SCORES:
    raise ValueError(f"Unknown task kind {kind!r}; use one of "
                     f"{', '.join(SCORES)}.")
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  if bad := [n for n in names if n not in SCORES[kind]]:
    raise ValueError(f"Unknown {kind} score {bad[0]!r}; use one or more of "
                     f"{', '.join(SCORES[kind])}.")
  if kind == "tagging":
    counts = entity_f1(pred, gold)
    return {n: counts[n.removeprefix("entity_")] for n in names}
  functions = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1,
               "matthews": matthews, "pearson": pearson, "spearman": spearman}
  return {n: functions[n](pred, gold) for n in names}


def _pair(pred: Sequence, gold: Sequence,
          dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """pred and gold as 1-D arrays of one length."""
  pred, gold = np.asarray(pred, dtype), np.asarray(gold, dtype)
  if pred.ndim != 1 or pred.shape != gold.shape:
    raise ValueError(f"pred and gold must be 1-D of one length, got shapes "
                     f"{pred.shape} and {gold.shape}.")
  return pred, gold


def _f1(pred: np.ndarray, gold: np.ndarray) -> float:
  """F1 from boolean membership arrays: 2TP / (2TP + FP + FN), 0 if empty."""
  true_pos = np.sum(pred & gold)
  denominator = np.sum(pred) + np.sum(gold)
  return float(2 * true_pos / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x`; tied values get the mean of their ranks."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  first = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
  starts = np.flatnonzero(first)
  ends = np.append(starts[1:], len(x))  # One past each tie group.
  ranks = np.empty(len(x))
  ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(first) - 1]
  return ranks
