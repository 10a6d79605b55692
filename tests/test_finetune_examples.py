"""Task specs and labelled examples: every format, every error, GLUE by name.

GLUE comes from `tfds.testing.mock_data`, which builds examples from the
`glue` builder's own features: no download, no TensorFlow. Every error is
checked for its key phrase and for being one line.
"""
import json

import ml_collections
import pytest
import tensorflow_datasets as tfds

from mlm_jax.errors import ConfigError
from mlm_jax.finetune import examples
from mlm_jax.finetune import offline_task
from mlm_jax.finetune import tasks
from mlm_jax.finetune.examples import Example


def spec(path, kind="classification", source=None, columns=("text",),
         label="label", **splits):
  source = source or str(path).rsplit(".", 1)[-1]
  splits = splits or {"train": str(path)}
  return tasks.TaskSpec(kind, source, "", tuple(columns), label, splits)


def write(path, text):
  path.write_text(text, encoding="utf-8")
  return path


def error(fn, *args, match):
  """The message of the TaskDataError `fn(*args)` raises; one line."""
  with pytest.raises(tasks.TaskDataError, match=match) as e:
    fn(*args)
  assert "\n" not in str(e.value) and isinstance(e.value, ConfigError)
  return str(e.value)


def test_csv_pairs_and_an_unlabelled_test_split(tmp_path):
  write(tmp_path / "train.csv", 'a,b,label\n"One, two",Three,yes\n'
        "\n4,5, no \n")
  write(tmp_path / "test.csv", "a,b\nsix,seven\n")
  task = spec(tmp_path / "train.csv", columns=("a", "b"),
              train=str(tmp_path / "train.csv"),
              test=str(tmp_path / "test.csv"))
  assert examples.read_split(task, "train") == [
      Example(("One, two", "Three"), "yes"), Example(("4", "5"), "no")]
  # GLUE's test files have no label column: unlabelled, not an error.
  assert examples.read_split(task, "test") == [Example(("six", "seven"), None)]


def test_tsv_keeps_quotes_and_reads_regression_labels(tmp_path):
  # GLUE's TSVs hold unbalanced quotes: no quoting in TSV (run_classifier).
  path = write(tmp_path / "x.tsv", 'text\tscore\nsay "hi\t4.5\nok\t-1\n')
  assert examples.read_split(spec(path, "regression", label="score"),
                             "train") == [Example(('say "hi',), 4.5),
                                          Example(("ok",), -1.0)]


def test_jsonl_and_globs(tmp_path):
  write(tmp_path / "b.jsonl", json.dumps({"text": "later", "label": 0}) + "\n")
  write(tmp_path / "a.jsonl", json.dumps({"text": "first", "label": 1})
        + "\n\n" + json.dumps({"text": "b\u00e9", "label": "pos"}) + "\n")
  task = spec(tmp_path / "x.jsonl", train=str(tmp_path / "*.jsonl"))
  assert examples.read_split(task, "train") == [
      Example(("first",), "1"), Example(("b\u00e9",), "pos"),
      Example(("later",), "0")]


def test_conll(tmp_path):
  path = write(tmp_path / "ner.conll",
               "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O"
               "\n\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER")
  assert examples.read_split(spec(path, "tagging"), "train") == [
      Example((), None, ("EU", "rejects"), ("B-ORG", "O")),
      Example((), None, ("Peter", "Blackburn"), ("B-PER", "I-PER"))]


def test_bad_files(tmp_path):
  missing = tmp_path / "nope.csv"
  error(examples.read_split, spec(missing), "train",
        match=f"train split's file {missing} does not exist; set "
        "--config.task.train")
  path = write(tmp_path / "t.csv", "text,labl\nhello,1\n")
  assert error(examples.read_split, spec(path), "train",
               match="has no column 'label'; its columns are text, labl; "
               "set --config.task.label_column").startswith(str(path))
  error(examples.read_split, spec(path, columns=("txt",), label="labl"),
        "train", match="no column 'txt'.*set --config.task.text_columns")
  error(examples.read_split, spec(write(tmp_path / "e.csv", "text,label\n")),
        "train", match=r"The train split \(.*e.csv\) has no examples")
  error(examples.read_split, spec(write(tmp_path / "z.csv", "")),
        "train", match=r"The train split \(.*z.csv\) has no examples")
  error(examples.read_split, spec(tmp_path / "x.csv", train=str(tmp_path)),
        "train", match="does not exist")  # A directory is not a file.
  error(examples.read_split, spec(write(tmp_path / "f.csv",
                                        "text,label\na,b,c\n")),
        "train", match=r"f.csv:2: 3 fields where the header has 2")
  error(examples.read_split, spec(write(tmp_path / "l.csv",
                                        "text,label\na,\n")), "train",
        match=r"l.csv:2: no label in column 'label'; every train example")
  (tmp_path / "latin1.csv").write_bytes(b"text,label\ncaf\xe9,1\n")
  error(examples.read_split, spec(tmp_path / "latin1.csv"), "train",
        match="latin1.csv is not UTF-8 text.*re-encode it as UTF-8")
  path = write(tmp_path / "r.tsv", "text\tlabel\nfine\t3\nbad\thigh\n")
  error(examples.read_split, spec(path, "regression"), "train",
        match=r"r.tsv:3: regression label 'high' is not a finite number")
  path = write(tmp_path / "j.jsonl", '{"text": "a", "label": 1}\n[1]\n')
  error(examples.read_split, spec(path), "train",
        match=r"j.jsonl:2: not a JSON object \(a value\)")
  path = write(tmp_path / "k.jsonl", '{"text": "a", "label": 1\n')
  error(examples.read_split, spec(path), "train",
        match=r"k.jsonl:1: not a JSON object \(Expecting")
  path = write(tmp_path / "m.jsonl", '{"text": ["a"], "label": 1}\n')
  error(examples.read_split, spec(path), "train",
        match=r"m.jsonl:1: column 'text' holds a list, not a text")
  path = write(tmp_path / "b.conll", "EU B-ORG\n\nrejects\nx O\n")
  error(examples.read_split, spec(path, "tagging"), "train",
        match=r"b.conll:3: malformed CoNLL line 'rejects': a word and its tag")
  error(examples.read_split, spec(path, "tagging"), "test",
        match="The task has no test split; set --config.task.test")


def _config(**fields):
  task = tasks.task_config()
  task.update(fields)
  return task


def test_spec_from_config(tmp_path):
  sst2 = tasks.TaskSpec.from_config(_config(path_or_name="glue/sst2"))
  assert sst2 == tasks.GLUE["glue/sst2"]
  mnli = tasks.TaskSpec.from_config(_config(path_or_name="glue/mnli:2.0.0",
                                            test=""))
  assert mnli.splits == {"train": "train", "dev": "validation_matched",
                         "test": "test_matched"}
  assert mnli.text_columns == ("premise", "hypothesis")
  assert tasks.GLUE["glue/stsb"].kind == "regression"
  assert tasks.GLUE["glue/qqp"].text_columns == ("question1", "question2")
  assert len(tasks.GLUE) == 9
  ner = tasks.TaskSpec.from_config(_config(path_or_name="d/{split}.conll",
                                           dev="valid"))
  assert (ner.kind, ner.source, ner.splits) == (
      "tagging", "conll", {"train": "train", "dev": "valid"})
  pairs = tasks.TaskSpec.from_config(ml_collections.ConfigDict(dict(
      kind="classification", train="a/train.tsv", text_columns="q, p")))
  assert (pairs.source, pairs.text_columns, pairs.label_column) == (
      "tsv", ("q", "p"), "label")
  for fields, match in [
      ({}, "config.task.path_or_name: is empty; set "
       "--config.task.path_or_name to a tfds name"),
      ({"train": "x.txt"}, "cannot tell the format of 'x.txt'.*set "
       "--config.task.source to one of tfds, csv"),
      ({"train": "x.csv"}, "config.task.kind: '' is not a task kind"),
      ({"train": "x.csv", "kind": "regression", "text_columns": "a,b,c"},
       "config.task.text_columns: 3 columns given"),
      ({"train": "x.conll", "kind": "regression"}, "CoNLL files hold tags"),
      ({"path_or_name": "glue/cola", "source": "xml"}, "'xml' is not a "
       "source")]:
    error(tasks.TaskSpec.from_config, _config(**fields), match=match)
  # Files named by split fields, relative to a directory.
  write(tmp_path / "tr.csv", "text,label\na,x\n")
  task = tasks.TaskSpec.from_config(_config(
      path_or_name=str(tmp_path), train="tr.csv", kind="classification"))
  assert examples.read_split(task, "train") == [Example(("a",), "x")]


def test_label_vocabulary_and_unseen_labels():
  train = [Example(("t",), label) for label in "bacab"]
  assert examples.label_vocabulary(train, "classification") == ("a", "b", "c")
  assert examples.label_vocabulary([Example(("t",), 1.5)], "regression") == ()
  error(examples.label_vocabulary, train[:1], "classification",
        match=r"training split has 1 distinct label\(s\) \('b'\): nothing")
  dev = [Example(("t",), label) for label in "abzzyuvwxq"] + [
      Example(("t",), None)]
  examples.check_labels(("a", "b"), dev[:2] + dev[-1:], "dev")
  message = error(examples.check_labels, ("a", "b"), dev, "dev",
                  match=r"The dev split has 7 label\(s\) the training split "
                  r"never had: 'z' \(2 times\), 'y' \(1 times\)")
  assert message.count("times") == 5 and "and 2 more" in message
  sentence = Example((), None, ("EU", "rejects"), ("B-ORG", "O"))
  vocab = examples.label_vocabulary([sentence], "tagging")
  assert vocab == ("B-ORG", "O")
  error(examples.check_labels, vocab,
        [Example((), None, ("x",), ("B-MISC",))], "test",
        match=r"test split has 1 label\(s\).*'B-MISC' \(1 times\)")


@pytest.mark.parametrize("name", ["glue/sst2", "glue/mrpc", "glue/stsb"])
def test_glue_from_tfds(name, tmp_path):
  task = tasks.TaskSpec.from_config(_config(path_or_name=name,
                                            tfds_data_dir=str(tmp_path)))
  with tfds.testing.mock_data(num_examples=4,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    for split in ("train", "dev", "test"):
      got = examples.read_split(task, split)
      assert len(got) == 4
      assert all(len(e.texts) == len(task.text_columns) for e in got)
      assert all(isinstance(t, str) for e in got for t in e.texts)
  if task.kind == "regression":
    assert all(isinstance(e.label, float) for e in got)
  else:
    assert {e.label for e in got} <= {"0", "1"}
  assert not any(tmp_path.iterdir())


def test_tfds_test_split_labels_of_minus_one_are_unlabelled():
  def as_data_source(self, split, **kwargs):
    del self, kwargs
    label = 1 if split == "train" else -1
    return [{"idx": 0, "label": label, "sentence": b"caf\xc3\xa9"}]

  task = tasks.GLUE["glue/cola"]
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    # Real data gives bytes (the mock of USE_CODE gives str).
    assert examples.read_split(task, "train") == [Example(("café",), "1")]
    assert examples.read_split(task, "test") == [Example(("café",), None)]
    error(examples.read_split, task, "dev",
          match=r"tfds glue/cola validation\[0\]: no label in column "
          "'label'; every dev example needs one")


def test_tfds_tagging_reads_tag_names():
  def as_data_source(self, split, **kwargs):
    del self, kwargs
    words = [b"EU", b"rejects"] if split == "train" else [b"EU"]
    return [{"tokens": words, "ner": [3, 0], "pos": [], "chunks": []}]

  task = tasks.TaskSpec("tagging", "tfds", "conll2003", ("tokens",), "ner",
                        {"train": "train", "dev": "validation"})
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    assert examples.read_split(task, "train") == [
        Example((), None, ("EU", "rejects"), ("B-ORG", "O"))]
    error(examples.read_split, task, "dev",
          match=r"conll2003 validation\[0\]: 1 words but 2 tags")


def test_tfds_errors(tmp_path):
  unknown = tasks.TaskSpec("classification", "tfds", "gluex/sst2",
                           ("sentence",), "label", {"train": "train"},
                           str(tmp_path))
  error(examples.read_split, unknown, "train",
        match=r"Unknown tfds dataset 'gluex/sst2'. Did you mean 'glue'\?.*Set "
        "--config.task.path_or_name")
  cola = tasks.TaskSpec.from_config(_config(
      path_or_name="glue/cola", tfds_data_dir=str(tmp_path)))
  error(examples.read_split, cola, "train",
        match=f"'glue/cola'.*is not prepared in {tmp_path}. Prepare it once "
        "as array_record: tfds build glue/cola.*Or set "
        "--config.task.tfds_data_dir")
  bad = tasks.TaskSpec.from_config(_config(
      path_or_name="glue/cola", label_column="labl",
      tfds_data_dir=str(tmp_path)))
  error(examples.read_split, bad, "train",
        match="tfds glue/cola has no feature 'labl'; its features are "
        "sentence, label, idx; set --config.task.label_column")
  assert not any(tmp_path.iterdir())


def test_reads_the_offline_task(tmp_path):
  """The offline downstream task's files are a JSONL task by defaults."""
  lines = [json.dumps({"text": f"Doc {i} of {package}, on {package} things.",
                       "source": f"site-packages/{package}/m{i}.py"})
           for package in ("alpha", "beta", "gamma") for i in range(40)]
  corpus = write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")
  paths = offline_task.offline_task(tmp_path, corpus_path=corpus,
                                    num_classes=2, max_chars=None,
                                    min_per_class=2)
  task = tasks.TaskSpec.from_config(_config(
      path_or_name=str(paths["train"].parent / "{split}.jsonl"),
      kind="classification", test="test"))
  got = {split: examples.read_split(task, split) for split in paths}
  for split, path in paths.items():
    assert got[split] == [Example((text,), label) for text, label in
                          offline_task.read_examples(path)]
  vocab = examples.label_vocabulary(got["train"], task.kind)
  assert vocab == tuple(sorted(offline_task.class_names(paths)))
  examples.check_labels(vocab, got["dev"] + got["test"], "dev and test")
