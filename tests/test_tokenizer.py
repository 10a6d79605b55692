"""Tests for mlm_jax.tokenizer: reserved ids, long lines, determinism, files."""
import hashlib
import io
import os
import pickle

import numpy as np
import pytest
import sentencepiece as spm

from mlm_jax import tokenizer as tok

VOCAB = 200
# The synthetic corpus never uses these letters, so pieces containing them can
# only come from text a test adds on purpose.
RARE_WORD = "qzxvqzxv"


def make_texts(num_docs=300, seed=0):
  """Deterministic English-like documents (Zipfian words without q/v/x/z)."""
  rng = np.random.default_rng(seed)
  letters = list("abcdefghijklmnoprstuwy")
  words = ["".join(rng.choice(letters, size=rng.integers(1, 9)))
           for _ in range(600)]
  p = 1.0 / np.arange(1, len(words) + 1)
  p /= p.sum()
  docs = []
  for _ in range(num_docs):
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 25), p=p))
             + rng.choice([".", ",", "!", " 1984."])
             for _ in range(rng.integers(1, 6))]
    docs.append("\n".join(lines))
  return docs


@pytest.fixture(scope="module")
def texts():
  return make_texts()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, texts):
  path = tmp_path_factory.mktemp("tok") / "spm.model"
  return tok.train_sentencepiece(texts, path, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tokenizer(model_path):
  return tok.Tokenizer.load(model_path)


def test_special_ids_and_pieces(tokenizer):
  assert (tok.PAD_ID, tok.UNK_ID, tok.CLS_ID, tok.SEP_ID, tok.MASK_ID) == (
      0, 1, 2, 3, 4)
  assert tok.NUM_SPECIAL_TOKENS == 5
  assert [tokenizer.id_to_piece(i) for i in range(5)] == [
      "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert tokenizer.vocab_size == VOCAB


def test_encode_decode(tokenizer, texts):
  ids = tokenizer.encode(texts[:5])
  assert len(ids) == 5
  for x, text in zip(ids, texts[:5]):
    assert x.dtype == np.int32 and x.ndim == 1 and x.size > 0
    assert x.min() >= tok.NUM_SPECIAL_TOKENS  # Known characters only.
    assert tokenizer.decode(x) == " ".join(text.split())
  assert tokenizer.encode([]) == []
  assert tokenizer.encode([""])[0].shape == (0,)
  with pytest.raises(TypeError, match=r"\[text\]"):
    tokenizer.encode("a bare string")


def test_digits_are_split(tmp_path, texts):
  # "2024" on every line would surely be a piece if digits were not split.
  path = tok.train_sentencepiece([t + " 2024" for t in texts],
                                 tmp_path / "d.model", vocab_size=VOCAB)
  t = tok.Tokenizer.load(path)
  pieces = [t.id_to_piece(i) for i in t.encode(["2024"])[0]]
  assert [p.lstrip("▁") for p in pieces if p.lstrip("▁")] == list("2024")


def test_literal_special_piece_text_is_not_special(tokenizer):
  for text in ["[MASK]", "a [MASK] b [CLS] c [SEP] [PAD]"]:
    (ids,) = tokenizer.encode([text])
    assert not np.isin(ids, [tok.PAD_ID, tok.CLS_ID, tok.SEP_ID,
                             tok.MASK_ID]).any(), ids


def test_fingerprint_and_pickle(tokenizer, model_path):
  assert tokenizer.fingerprint == hashlib.sha256(
      model_path.read_bytes()).hexdigest()[:16]
  clone = pickle.loads(pickle.dumps(tokenizer))
  assert clone.fingerprint == tokenizer.fingerprint
  assert clone.path == tokenizer.path
  text = ["some words 12"]
  np.testing.assert_array_equal(clone.encode(text)[0],
                                tokenizer.encode(text)[0])


def test_same_input_gives_byte_identical_model(tmp_path, texts, model_path):
  # A generator instead of a list, in another directory: same bytes.
  again = tok.train_sentencepiece((t for t in texts), tmp_path / "b.model",
                                  vocab_size=VOCAB)
  assert again.read_bytes() == model_path.read_bytes()
  other = tok.train_sentencepiece(texts[:-1], tmp_path / "c.model",
                                  vocab_size=VOCAB)
  assert other.read_bytes() != model_path.read_bytes()


def test_bpe(tmp_path, texts):
  path = tok.train_sentencepiece(texts, tmp_path / "bpe.model",
                                 vocab_size=VOCAB, model_type="bpe")
  bpe = tok.Tokenizer.load(path)
  assert bpe.vocab_size == VOCAB
  assert bpe.decode(bpe.encode(texts[:1])[0]) == " ".join(texts[0].split())


def test_chunk_line():
  short = "hello world"
  assert tok.chunk_line(short, 64) == [short]
  line = " ".join(["wörd"] * 100 + ["é" * 150] + ["end"])  # é is 2 bytes.
  chunks = tok.chunk_line(line, 64)
  assert all(len(c.encode()) <= 64 for c in chunks)
  assert "".join(chunks).replace(" ", "") == line.replace(" ", "")
  # Words that fit are never cut.
  assert all(w == "wörd" for c in chunks[:5] for w in c.split())


def test_long_line_is_used(tmp_path, texts):
  long_line = " ".join([RARE_WORD] * 2000)  # 18 kB on one line.
  assert len(long_line.encode()) > 4 * tok.MAX_LINE_BYTES
  path = tok.train_sentencepiece(texts + [long_line], tmp_path / "l.model",
                                 vocab_size=VOCAB)
  t = tok.Tokenizer.load(path)
  (ids,) = t.encode([RARE_WORD])
  assert tok.UNK_ID not in ids  # Its letters are in the vocabulary...
  assert len(ids) <= 2  # ...and the word, this frequent, is (nearly) a piece.


def test_sentencepiece_itself_drops_long_lines(texts):
  # Guards the premise of test_long_line_is_used: fed raw, the long line is
  # skipped, so its letters stay unknown. If this starts failing, SentencePiece
  # changed and chunk_line may be unnecessary.
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts + [" ".join([RARE_WORD] * 2000)]),
      model_writer=writer, vocab_size=VOCAB, minloglevel=2)
  sp = spm.SentencePieceProcessor(model_proto=writer.getvalue())
  assert sp.unk_id() in sp.encode(RARE_WORD)


def test_evenly_spaced_subsample():
  lines = [str(i) for i in range(1000)]
  kept = tok._evenly_spaced(iter(lines), 100)
  assert 50 < len(kept) <= 100
  stride = int(kept[1]) - int(kept[0])
  assert kept == lines[::stride][:len(kept)]
  assert int(kept[-1]) >= 1000 - 2 * stride  # Reaches the end of the input.
  assert tok._evenly_spaced(iter(lines), None) == lines
  assert tok._evenly_spaced(iter(lines[:7]), 100) == lines[:7]


def test_max_sentences_caps_training_input(tmp_path, texts):
  # The held-out letters appear only in the second half: a cap that kept only
  # the beginning of the input (not spread over it) would never see them.
  late = [t + " " + RARE_WORD for t in texts]
  path = tok.train_sentencepiece(texts + late, tmp_path / "cap.model",
                                 vocab_size=VOCAB, max_sentences=300)
  (ids,) = tok.Tokenizer.load(path).encode([RARE_WORD])
  assert tok.UNK_ID not in ids


def test_failed_training_leaves_no_file(tmp_path, texts):
  path = tmp_path / "big.model"
  with pytest.raises(tok.VocabSizeError, match=r"vocab_size=50000 is more "
                     r"than its \d+ lines of text support \(at most \d+ "
                     "pieces") as raised:
    tok.train_sentencepiece(texts[:3], path, vocab_size=50_000)
  assert 0 < raised.value.at_most < 50_000 and raised.value.at_least is None
  assert os.listdir(tmp_path) == []  # Neither the model nor a temp file.
  # A previous model at the path survives a failed retraining untouched.
  path.write_bytes(b"previous")
  with pytest.raises(ValueError):
    tok.train_sentencepiece(texts[:3], path, vocab_size=50_000)
  assert path.read_bytes() == b"previous"
  assert os.listdir(tmp_path) == ["big.model"]


def test_vocabulary_smaller_than_the_characters_is_a_vocab_size_error(
    tmp_path):
  # 120 distinct characters, each frequent, and the word-boundary mark: all
  # must be pieces, beside the 5 reserved ids.
  text = "".join(chr(0x4E00 + i) for i in range(120))
  with pytest.raises(tok.VocabSizeError, match=r"vocab_size=60 is fewer "
                     r"pieces than the characters of its text need \(at "
                     r"least 126\)") as raised:
    tok.train_sentencepiece([text] * 20, tmp_path / "small.model",
                            vocab_size=60)
  assert raised.value.at_least == 126 and raised.value.at_most is None
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(vocab_size=5), "vocab_size"),
    (dict(vocab_size=VOCAB, model_type="word"), "model_type"),
    (dict(vocab_size=VOCAB, max_sentences=0), "max_sentences"),
])
def test_bad_arguments(tmp_path, texts, kwargs, match):
  with pytest.raises(ValueError, match=match):
    tok.train_sentencepiece(texts, tmp_path / "x.model", **kwargs)
  with pytest.raises(ValueError, match="'.model'"):
    tok.train_sentencepiece(texts, tmp_path / "prefix", vocab_size=VOCAB)
  with pytest.raises(ValueError, match="No non-empty text"):
    tok.train_sentencepiece(["", " \n "], tmp_path / "y.model",
                            vocab_size=VOCAB)


def test_foreign_model_is_rejected(tmp_path, texts):
  # SentencePiece's defaults: <unk>=0, <s>=1, </s>=2, no pad.
  prefix = tmp_path / "foreign"
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts),
                                 model_prefix=str(prefix), vocab_size=VOCAB,
                                 minloglevel=2)
  path = tmp_path / "foreign.model"
  with pytest.raises(ValueError) as e:
    tok.Tokenizer.load(path)
  msg = str(e.value)
  assert str(path) in msg
  assert "id 0 holds '<unk>'" in msg and "id 1 holds '<s>'" in msg
  assert "train_sentencepiece" in msg and "--pad_id=0" in msg


def test_garbage_and_missing_files(tmp_path):
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model.*not a SentencePiece"):
    tok.Tokenizer.load(junk)
  missing = tmp_path / "missing.model"
  with pytest.raises(FileNotFoundError,
                     match="missing.model.*train_sentencepiece"):
    tok.Tokenizer.load(missing)


def test_interrupted_write_keeps_previous_model(tmp_path, texts, monkeypatch):
  path = tmp_path / "m.model"
  path.write_bytes(b"previous")

  def crash(src, dst):
    raise KeyboardInterrupt  # As if killed between writing and renaming.

  monkeypatch.setattr(tok.os, "replace", crash)
  with pytest.raises(KeyboardInterrupt):
    tok.train_sentencepiece(texts, path, vocab_size=VOCAB)
  assert path.read_bytes() == b"previous"
  assert os.listdir(tmp_path) == ["m.model"]  # The temp file is cleaned up.


def test_word_starts_mark_the_first_piece_of_every_word(tokenizer, texts):
  starts = tokenizer.word_starts()
  assert starts.shape == (VOCAB,) and starts.dtype == bool
  assert starts[:tok.NUM_SPECIAL_TOKENS].all()  # specials end words
  assert 0 < starts[tok.NUM_SPECIAL_TOKENS:].mean() < 1
  for text, ids in zip(texts[:20], tokenizer.encode(texts[:20])):
    # One start per whitespace-separated word ("word." is one word).
    assert starts[ids].sum() == len(text.split())
