"""Downstream scores against hand counts, scipy, and conlleval's rules."""
import numpy as np
import pytest
from scipy import stats

from mlm_jax.finetune import scores


def test_accuracy_and_binary_f1():
  pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]
  assert scores.accuracy(pred, gold) == pytest.approx(4 / 6)
  # TP 2, FP 1, FN 1: precision = recall = 2/3.
  assert scores.f1(pred, gold) == pytest.approx(2 / 3)
  # Of class 0: TP 2, FP 1, FN 1 as well.
  assert scores.f1(pred, gold, positive=0) == pytest.approx(2 / 3)
  assert scores.f1(["yes", "no"], ["yes", "yes"], positive="yes") == (
      pytest.approx(2 / 3))
  # No positive anywhere: undefined, 0 (as scikit-learn).
  assert scores.f1([0, 0], [0, 0]) == 0.0
  assert scores.f1([0, 0], [1, 1]) == 0.0


def test_macro_f1():
  pred, gold = [0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 2]
  # Class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 1, FP 1, FN 1 -> 1/2;
  # class 2: TP 1, FP 1, FN 2 -> 2/5.
  assert scores.macro_f1(pred, gold) == pytest.approx((2 / 3 + 1 / 2 + 2 / 5)
                                                      / 3)
  # A label only predicted counts too (F1 0), as scikit-learn's default.
  assert scores.macro_f1([0, 3], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)


def _mcc_from_one_hot(pred, gold):
  """MCC as the correlation of one-hot matrices (Gorodkin 2004)."""
  labels = sorted(set(pred) | set(gold))
  x = np.array([[p == c for c in labels] for p in pred], float)
  y = np.array([[g == c for c in labels] for g in gold], float)
  cov = lambda a, b: np.sum((a - a.mean(0)) * (b - b.mean(0)))
  return cov(x, y) / np.sqrt(cov(x, x) * cov(y, y))


def test_matthews():
  # scikit-learn's documented example.
  assert scores.matthews([1, -1, 1, 1], [1, 1, 1, -1]) == pytest.approx(
      -1 / 3)
  # Binary from a confusion matrix: TP 3, TN 4, FP 1, FN 2.
  pred = [1] * 3 + [0] * 4 + [1] + [0] * 2
  gold = [1] * 3 + [0] * 4 + [0] + [1] * 2
  tp, tn, fp, fn = 3, 4, 1, 2
  assert scores.matthews(pred, gold) == pytest.approx(
      (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp)
                                    * (tn + fn)))
  # Three classes, from the confusion matrix [gold, pred] below.
  confusion = np.array([[5, 1, 0], [2, 3, 1], [0, 2, 6]])
  gold, pred = [], []
  for g in range(3):
    for p in range(3):
      gold += [g] * confusion[g, p]
      pred += [p] * confusion[g, p]
  n, c = confusion.sum(), np.trace(confusion)
  t, p = confusion.sum(1), confusion.sum(0)
  by_hand = (c * n - t @ p) / np.sqrt((n * n - p @ p) * (n * n - t @ t))
  assert scores.matthews(pred, gold) == pytest.approx(by_hand)
  assert scores.matthews(pred, gold) == pytest.approx(
      _mcc_from_one_hot(pred, gold))
  assert scores.matthews(["b", "a", "c"], ["a", "a", "c"]) == pytest.approx(
      _mcc_from_one_hot(["b", "a", "c"], ["a", "a", "c"]))
  # Undefined (one class predicted, or one in gold): 0.
  assert scores.matthews([1, 1, 1], [0, 1, 0]) == 0.0
  assert scores.matthews([0, 1, 0], [1, 1, 1]) == 0.0
  assert scores.matthews([2, 2, 2], [2, 2, 2]) == 0.0


def test_correlations_match_scipy():
  rng = np.random.default_rng(0)
  gold = rng.integers(0, 6, 200).astype(float)  # Many ties.
  pred = gold + rng.normal(0, 2, 200).round()
  assert scores.pearson(pred, gold) == pytest.approx(
      stats.pearsonr(pred, gold)[0], abs=1e-12)
  assert scores.spearman(pred, gold) == pytest.approx(
      stats.spearmanr(pred, gold)[0], abs=1e-12)
  assert scores.spearman([1, 2, 2, 3], [1, 3, 3, 2]) == pytest.approx(
      stats.spearmanr([1, 2, 2, 3], [1, 3, 3, 2])[0])
  # Constant predictions, or too few values: undefined, 0 (scipy: NaN).
  assert scores.pearson([1, 1, 1], [1, 2, 3]) == 0.0
  assert scores.spearman([1, 2, 3], [4, 4, 4]) == 0.0
  assert scores.pearson([1], [2]) == 0.0


def test_entities_iob2_iob1_and_iobes():
  assert scores.entities(["B-PER", "I-PER", "O", "B-LOC"]) == [
      ("PER", 0, 1), ("LOC", 3, 3)]
  # IOB1: I- after O, or after another type, starts an entity; B- only
  # separates two of one type.
  assert scores.entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == [
      ("PER", 0, 1), ("PER", 2, 2), ("LOC", 4, 4)]
  assert scores.entities(["I-PER", "I-LOC", "I-LOC"]) == [
      ("PER", 0, 0), ("LOC", 1, 2)]
  # The same B-I-I read as IOB2: one entity.
  assert scores.entities(["B-ORG", "I-ORG", "I-ORG"]) == [("ORG", 0, 2)]
  # Cut at the sentence's end.
  assert scores.entities(["O", "B-LOC", "I-LOC"]) == [("LOC", 1, 2)]
  assert scores.entities(["O", "O"]) == [] and scores.entities([]) == []
  assert scores.entities(["S-PER", "B-LOC", "E-LOC", "E-LOC"]) == [
      ("PER", 0, 0), ("LOC", 1, 2), ("LOC", 3, 3)]


def test_entity_f1_conll():
  # seqeval's README example: F1 0.5.
  gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"],
          ["B-PER", "I-PER", "O"]]
  pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"],
          ["B-PER", "I-PER", "O"]]
  assert scores.entity_f1(pred, gold) == pytest.approx(
      {"precision": 0.5, "recall": 0.5, "f1": 0.5})
  # Right span, wrong type: no credit, and one found entity becomes two.
  assert scores.entity_f1([["B-PER", "I-ORG"]], [["B-PER", "I-PER"]]) == {
      "precision": 0.0, "recall": 0.0, "f1": 0.0}
  # An entity ending a sentence does not run on into the next one's I-:
  # two gold entities; the prediction finds them both plus a spurious one.
  gold = [["O", "B-LOC", "I-LOC"], ["I-LOC", "O"]]
  pred = [["O", "B-LOC", "I-LOC"], ["I-LOC", "B-PER"]]
  assert scores.entity_f1(pred, gold) == pytest.approx(
      {"precision": 2 / 3, "recall": 1.0, "f1": 0.8})
  # IOB1 gold, IOB2 prediction of the same entities: equal.
  assert scores.entity_f1([["B-PER", "I-PER", "B-PER"]],
                          [["I-PER", "I-PER", "B-PER"]])["f1"] == 1.0
  # Nothing predicted, nothing to find: 0, not NaN.
  assert scores.entity_f1([["O"]], [["O"]]) == {
      "precision": 0.0, "recall": 0.0, "f1": 0.0}
  with pytest.raises(ValueError, match="sentence 0 has 1 predicted and 2"):
    scores.entity_f1([["O"]], [["O", "O"]])


def test_score_by_name():
  assert scores.score("classification", [1, 0], [1, 1],
                      ["accuracy", "f1"]) == pytest.approx(
                          {"accuracy": 0.5, "f1": 2 / 3})
  assert list(scores.score("regression", [1, 2, 3], [1, 2, 4],
                           "pearson, spearman")) == ["pearson", "spearman"]
  assert scores.score("tagging", [["B-X", "O"]], [["B-X", "B-X"]],
                      ["entity_precision", "entity_recall", "entity_f1"]) == (
                          pytest.approx({"entity_precision": 1.0,
                                         "entity_recall": 0.5,
                                         "entity_f1": 2 / 3}))
  with pytest.raises(ValueError, match="Unknown classification score 'acc'; "
                     "use one or more of accuracy, f1, macro_f1, matthews"):
    scores.score("classification", [1], [1], ["acc"])
  with pytest.raises(ValueError, match="Unknown regression score 'accuracy'"):
    scores.score("regression", [1.0], [1.0], ["accuracy"])
  with pytest.raises(ValueError, match="Unknown task kind 'ranking'"):
    scores.score("ranking", [1], [1], ["accuracy"])
  with pytest.raises(ValueError, match="1-D of one length"):
    scores.accuracy([1, 2], [1])
