"""Tests of tfds corpora read without TensorFlow (tfds_source, offline_tfds).

Public datasets are mocked with `tfds.testing.mock_data` (which mocks
`as_data_source`, so also `tfds.data_source`); real ArrayRecord files come from
`mlm_jax_offline` prepared from two small source files. Nothing is
downloaded: the error paths use empty data_dirs, which must stay empty.
"""

import json
import logging
import pathlib
import shutil
import sys
import tempfile

import pytest
import tensorflow_datasets as tfds

from mlm_jax.data import offline
from mlm_jax.data import offline_tfds
from mlm_jax.data import tfds_source

PROSE = ("The quick brown fox jumps over the lazy dog while the farmer "
         "watches from the porch of the old house, and nobody in the village "
         "seems to mind it.")


def _write_sources(root, files):
  root.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (root / name).write_text(text, encoding="utf-8")
  return {"pkg": str(root)}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """(roots, data_dir, corpus_dir, name) of a prepared small offline corpus."""
  tmp = tmp_path_factory.mktemp("offline_tfds")
  roots = _write_sources(tmp / "src", {
      "a.py": (f'"""Module a. {PROSE}"""\n\n'
               f'def f():\n    """Function f. {PROSE}"""\n'),
      "b.py": f'"""Module b, café. {PROSE}"""\n',
  })
  data_dir, corpus_dir = tmp / "tfds", tmp / "corpora"
  name = offline_tfds.prepare_offline_tfds(
      data_dir, corpus_dir=corpus_dir, roots=roots, include_topics=False)
  return roots, data_dir, corpus_dir, name


def _stray_temp_dirs():
  """What tfds leaves in the temp dir: one per unprepared builder made."""
  return set(pathlib.Path(tempfile.gettempdir()).glob("tmp*tfds"))


@pytest.mark.parametrize("prepare", ["prepare_offline_tfds", "data_source"])
def test_preparing_is_quiet_and_leaves_no_temp_dirs(prepare, tmp_path, capfd,
                                                    caplog):
  """No prints, progress bars (control characters in log files), "nothing
  prepared yet" warnings or empty temporary directories from tfds."""
  roots = _write_sources(tmp_path / "src", {"a.py": f'"""Module a. {PROSE}"""'})
  kwargs = dict(corpus_dir=tmp_path / "corpora", roots=roots,
                include_topics=False)
  bars = tfds.core.utils.tqdm_utils._active
  temp_dirs = _stray_temp_dirs()
  caplog.set_level(logging.INFO)
  if prepare == "prepare_offline_tfds":
    offline_tfds.prepare_offline_tfds(tmp_path / "tfds", **kwargs)
  else:
    tfds.data_source("mlm_jax_offline", split="train",
                     data_dir=tmp_path / "tfds", builder_kwargs=kwargs)
  out, err = capfd.readouterr()
  for noise in ("\x1b", "\r", "Downloading and preparing",
                "downloaded and prepared", "Generating splits",
                "Generating train examples", "Shuffling", "dataset_info"):
    assert noise not in out + err
  messages = [r.getMessage() for r in caplog.records]
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert [m for m in messages if m.startswith("Built the offline corpus")]
  assert [m for m in messages if m.startswith("Prepared the tfds dataset")]
  assert tfds.core.utils.tqdm_utils._active == bars  # Restored.
  assert _stray_temp_dirs() == temp_dirs


def _jsonl(corpus_dir, name):
  config = name.split("/")[1]
  with open(corpus_dir / f"offline-{config}.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_offline_corpus_as_tfds_reads_back_in_order(small):
  _, data_dir, corpus_dir, name = small
  config = offline_tfds.corpus_config_name(small[0], include_topics=False)
  assert name == f"mlm_jax_offline/{config}"
  records = _jsonl(corpus_dir, name)
  assert [r["text"] for r in records] == list(
      offline.read_documents(corpus_dir / f"offline-{config}.jsonl"))
  assert len(records) == 3
  texts = tfds_source.tfds_documents(name, data_dir=data_dir)
  assert list(texts) == [r["text"] for r in records]
  assert tfds_source.tfds_num_documents(name, data_dir=data_dir) == 3
  # Real data comes back as bytes; the source feature is kept too.
  source = tfds.data_source(name, split="train", data_dir=data_dir,
                            download=False)
  assert [source[i]["source"].decode() for i in range(3)] == [
      r["source"] for r in records]
  assert isinstance(source[0]["text"], bytes)
  layout = data_dir / "mlm_jax_offline" / config / "1.0.0"
  assert sorted(p.name for p in layout.iterdir()) == [
      "dataset_info.json", "features.json",
      "mlm_jax_offline-train.array_record-00000-of-00001"]
  assert "tensorflow" not in sys.modules  # Built and read without it.


def test_prepare_again_does_not_rebuild(small, monkeypatch):
  roots, data_dir, corpus_dir, name = small

  def fail(*args, **kwargs):
    raise AssertionError("rebuilt")

  monkeypatch.setattr(offline_tfds.MlmJaxOffline, "download_and_prepare",
                      fail)
  assert offline_tfds.prepare_offline_tfds(
      data_dir, corpus_dir=corpus_dir, roots=roots,
      include_topics=False) == name


def test_another_corpus_gets_its_own_dataset(small, tmp_path):
  roots, data_dir, corpus_dir, name = small
  other = _write_sources(tmp_path / "src", {"c.py": f'"""Module c. {PROSE}"""'})
  other_name = offline_tfds.prepare_offline_tfds(
      data_dir, corpus_dir=corpus_dir, roots=other, include_topics=False)
  assert other_name != name
  assert len(list(tfds_source.tfds_documents(other_name,
                                             data_dir=data_dir))) == 1
  assert len(list(tfds_source.tfds_documents(name, data_dir=data_dir))) == 3
  assert tfds_source.tfds_fingerprint(other_name, "train", data_dir) != (
      tfds_source.tfds_fingerprint(name, "train", data_dir))


def test_corpus_of_another_environment_is_never_built_here(small, tmp_path):
  roots, _, corpus_dir, _ = small
  foreign = "mlm_jax_offline/v2-0123456789abcdef"
  with pytest.raises(FileNotFoundError) as error:
    tfds_source.tfds_documents(foreign, data_dir=tmp_path)
  assert "--imports=mlm_jax.data.offline_tfds" in str(error.value)
  builder = tfds.builder(foreign, data_dir=tmp_path, corpus_dir=corpus_dir,
                         roots=roots, include_topics=False)
  with pytest.raises(ValueError, match="made in another environment"):
    builder.download_and_prepare(file_format="array_record")


def test_tfds_data_source_builds_registered_builder(small, tmp_path):
  roots, _, corpus_dir, name = small
  # No config: the corpus of the builder's sources; array_record by default.
  source = tfds.data_source(
      "mlm_jax_offline", split="train", data_dir=tmp_path,
      builder_kwargs=dict(corpus_dir=corpus_dir, roots=roots,
                          include_topics=False))
  assert len(source) == 3
  assert (tmp_path / name).is_dir()


def test_fingerprint_covers_version_split_and_size(small):
  _, data_dir, _, name = small
  fingerprint = tfds_source.tfds_fingerprint(name, "train", data_dir)
  assert fingerprint == tfds_source.tfds_fingerprint(name, "train", data_dir)
  assert len(fingerprint) == 16
  assert tfds_source.tfds_fingerprint(name, "train[:2]", data_dir) != (
      fingerprint)
  assert tfds_source.tfds_fingerprint(
      name, "train", data_dir, text_feature="source") != fingerprint
  assert tfds_source.tfds_num_documents(name, split="train[:2]",
                                        data_dir=data_dir) == 2


def test_fingerprint_ignores_the_location(small, tmp_path):
  _, data_dir, _, name = small
  shutil.copytree(data_dir / "mlm_jax_offline", tmp_path / "mlm_jax_offline")
  assert tfds_source.tfds_fingerprint(name, "train", tmp_path) == (
      tfds_source.tfds_fingerprint(name, "train", data_dir))


@pytest.mark.parametrize("name", ["lm1b", "tiny_shakespeare", "c4/en",
                                  "wikipedia/20230601.en"])
def test_mock_data(name, tmp_path):
  # c4 and wikipedia are only found once tfds's lazily registered text
  # builders are imported (see tfds_source._BUILDER_PACKAGES).
  with tfds.testing.mock_data(num_examples=5,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    texts = list(tfds_source.tfds_documents(name, data_dir=tmp_path))
    assert len(texts) == 5
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert tfds_source.tfds_num_documents(name, data_dir=tmp_path) == 5
    fingerprint = tfds_source.tfds_fingerprint(name, "train", tmp_path)
  with tfds.testing.mock_data(num_examples=6):
    assert tfds_source.tfds_fingerprint(name, "train", tmp_path) != (
        fingerprint)
  assert not any(tmp_path.iterdir())


def test_decodes_bytes_and_skips_blank_texts():
  def as_data_source(self, split, **kwargs):
    del self, split, kwargs
    return [{"text": b"caf\xc3\xa9"}, {"text": b" \n\t"}, {"text": ""},
            {"text": b"bad \xff byte"}, {"text": "already str"}]

  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    assert list(tfds_source.tfds_documents("lm1b")) == [
        "café", "bad \ufffd byte", "already str"]
    assert tfds_source.tfds_num_documents("lm1b") == 5


def test_mock_data_with_real_metadata_knows_the_splits(small):
  _, data_dir, _, name = small
  with tfds.testing.mock_data(num_examples=2, data_dir=data_dir,
                              policy=tfds.testing.MockPolicy.USE_FILES):
    assert len(list(tfds_source.tfds_documents(name, data_dir="/nowhere"))) == 2
    with pytest.raises(ValueError, match="its splits: train"):
      tfds_source.tfds_documents(name, split="validation")


def test_unknown_name_suggests_a_close_one(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown tfds dataset 'c4x/en'\. "
                     r"Did you mean 'c4'\?"):
    tfds_source.tfds_documents("c4x/en", data_dir=tmp_path)
  with pytest.raises(ValueError, match="has no config 'enx'; its configs: en,"):
    tfds_source.tfds_documents("c4/enx", data_dir=tmp_path)
  with pytest.raises(ValueError, match="cannot be loaded at version 9.9.9"):
    tfds_source.tfds_documents("lm1b:9.9.9", data_dir=tmp_path)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["lm1b", "c4/en"])
def test_not_prepared_says_how_to_prepare(name, tmp_path):
  temp_dirs = _stray_temp_dirs()
  with pytest.raises(FileNotFoundError) as error:
    tfds_source.tfds_documents(name, data_dir=tmp_path)
  message = str(error.value)
  assert f"is not prepared in {tmp_path}" in message
  assert (f"tfds build {name} --file_format=array_record "
          f"--data_dir={tmp_path}") in message
  assert (f"tfds.builder({name!r}, data_dir={str(tmp_path)!r})"
          ".download_and_prepare(file_format='array_record')") in message
  assert "Apache Beam" in message
  assert not any(tmp_path.iterdir())  # Nothing downloaded or written.
  assert _stray_temp_dirs() == temp_dirs


def test_not_random_access_says_how_to_convert(small, tmp_path):
  _, data_dir, _, name = small
  shutil.copytree(data_dir / "mlm_jax_offline", tmp_path / "mlm_jax_offline")
  info_path = tmp_path / name / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match="as tfrecord, which has no random "
                     "access") as error:
    tfds_source.tfds_documents(name, data_dir=tmp_path)
  assert (f"tfds convert_format --dataset_version_dir={tmp_path / name}/1.0.0"
          " --out_file_format=array_record") in str(error.value)


def test_bad_split_lists_the_splits(small):
  _, data_dir, _, name = small
  with pytest.raises(ValueError, match=r"has no split 'validation'; its "
                     r"splits: train\."):
    tfds_source.tfds_documents(name, split="validation", data_dir=data_dir)
  with pytest.raises(ValueError, match="incompatible with 3 examples"):
    tfds_source.tfds_documents(name, split="train[:10]", data_dir=data_dir)


def test_bad_feature_lists_the_features(small):
  _, data_dir, _, name = small
  with pytest.raises(ValueError, match=r"has no feature 'content'; its "
                     r"features: source, text\."):
    tfds_source.tfds_documents(name, text_feature="content",
                               data_dir=data_dir)


def test_feature_that_is_not_text_lists_the_text_features():
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match=r"'label' of 'imdb_reviews' is not a "
                       r"text but ClassLabel.*its text features: text\."):
      tfds_source.tfds_documents("imdb_reviews", text_feature="label")
