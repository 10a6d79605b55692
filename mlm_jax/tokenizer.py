"""SentencePiece tokenizer: train once, load with the reserved special ids.

Every model this module trains reserves the same five ids, so masking,
packing and the model can rely on them without looking at the model file:

  id  piece     role
  0   [PAD]     padding; never produced from text
  1   [UNK]     characters outside the trained coverage
  2   [CLS]     first token of every example
  3   [SEP]     end of a document / of an example
  4   [MASK]    masked slot

Ids 2-4 are SentencePiece *control* symbols: they are never produced from raw
text, so a literal "[MASK]" in a document is ordinary text, not a mask.
Ordinary pieces are ids [NUM_SPECIAL_TOKENS, vocab_size).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from absl import logging

from mlm_jax import errors

PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SEP_ID = 3
MASK_ID = 4
NUM_SPECIAL_TOKENS = 5
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# SentencePiece skips (with only a log line) every input line longer than
# this many bytes; we pass it explicitly and cut longer lines below it.
MAX_LINE_BYTES = 4192

# The unigram E-step splits its input into `num_threads` shards and sums
# their float statistics, so the scores (hence the model bytes) depend on the
# thread count. A fixed default makes the same corpus give the same model on
# a laptop and on a 96-core host; oversubscribing 2 cores costs little.
DEFAULT_TRAIN_THREADS = 16


class VocabSizeError(ValueError):
  """The training text cannot give `vocab_size` pieces.

  Attributes:
    vocab_size: the size asked for.
    at_most: the largest size the text supports, if that was exceeded.
    at_least: the smallest size its characters need, if that was not met.
  """

  def __init__(self, message: str, vocab_size: int, *,
               at_most: int | None = None, at_least: int | None = None):
    super().__init__(message)
    self.vocab_size, self.at_most, self.at_least = (vocab_size, at_most,
                                                    at_least)


# What SentencePiece's trainer says (in a RuntimeError) when the text has
# too few distinct pieces for the vocabulary, or too many characters for it.
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it "
                       r"to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. "
                      r"(\d+) vs (\d+)")


def chunk_line(line: str, max_bytes: int = MAX_LINE_BYTES) -> list[str]:
  """Cuts `line` into pieces of at most `max_bytes` UTF-8 bytes each.

  Cuts at whitespace (words rejoined with single spaces, as SentencePiece's
  normaliser would); a word longer than `max_bytes` (base64, a URL...) is cut
  at UTF-8 character boundaries.
  """
  if len(line.encode("utf-8")) <= max_bytes:
    return [line]
  words = []
  for word in line.split():
    data = word.encode("utf-8")
    while len(data) > max_bytes:
      cut = max_bytes
      while data[cut] & 0xC0 == 0x80:  # Not inside a multi-byte character.
        cut -= 1
      words.append(data[:cut])
      data = data[cut:]
    words.append(data)
  chunks, current, size = [], [], -1  # size: bytes of " ".join(current).
  for data in words:
    if current and size + 1 + len(data) > max_bytes:
      chunks.append(b" ".join(current).decode("utf-8"))
      current, size = [], -1
    current.append(data)
    size += 1 + len(data)
  if current:
    chunks.append(b" ".join(current).decode("utf-8"))
  return chunks


def _training_lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
  """Non-empty lines of `texts`, each at most `max_bytes` bytes."""
  for text in texts:
    for line in text.splitlines():
      line = line.strip()
      if line:
        yield from chunk_line(line, max_bytes)


def _evenly_spaced(lines: Iterable[str], max_lines: int | None) -> list[str]:
  """Keeps every k-th line, k a power of two, so at most `max_lines` remain.

  Streams in O(max_lines) memory without knowing the length in advance:
  whenever the buffer overflows, every other kept line is dropped and the
  stride doubles. The result (between max_lines/2 and max_lines lines spread
  over the whole input) depends only on the input, never on a random seed.
  """
  if max_lines is None:
    return list(lines)
  kept, stride = [], 1
  for i, line in enumerate(lines):
    if i % stride == 0:
      kept.append(line)
      if len(kept) > max_lines:
        kept, stride = kept[::2], stride * 2
  return kept


def train_sentencepiece(
    texts: Iterable[str],
    model_path: str | os.PathLike[str],
    *,
    vocab_size: int,
    model_type: str = "unigram",
    max_sentences: int | None = 2_000_000,
    character_coverage: float = 0.9995,
    byte_fallback: bool = False,
    split_digits: bool = True,
    num_threads: int | None = None,
) -> pathlib.Path:
  """Trains a SentencePiece model with the reserved ids; returns `model_path`.

  Args:
    texts: documents; split into lines, empty lines dropped, lines over
      MAX_LINE_BYTES cut (SentencePiece would silently skip them).
    model_path: the `.model` file to write, atomically: a failed or
      interrupted training leaves no partial file and any old one untouched.
    vocab_size: total vocabulary, the NUM_SPECIAL_TOKENS reserved ids included.
    model_type: "unigram" (SentencePiece's default) or "bpe".
    max_sentences: cap on training lines (speed, memory), subsampled evenly
      over the whole input without randomness. None: every line.
    character_coverage: the rarest characters outside this fraction become
      [UNK] rather than spend vocabulary (SentencePiece's advice for
      alphabetic scripts; 1.0 keeps every character).
    byte_fallback: spell unknown characters as 256 byte pieces instead of
      [UNK]: lossless, but costs 256 ids (vocab_size must exceed ~300).
    split_digits: numbers become single digits: no vocabulary spent on
      frequent numbers, and every number is spelled the same way.
    num_threads: trainer threads. Unigram scores depend on it, so None means
      the fixed DEFAULT_TRAIN_THREADS, not the machine's core count.

  Raises:
    VocabSizeError: vocab_size is more than the text supports, or fewer
      pieces than its characters need.
    ValueError: bad arguments, no text, or SentencePiece rejected the
      settings for this text for another reason.
  """
  model_path = pathlib.Path(model_path)
  if model_path.suffix != ".model":
    raise ValueError(
        f"model_path must name a '.model' file, got {str(model_path)!r}.")
  if model_type not in ("unigram", "bpe"):
    raise ValueError(
        f"model_type must be 'unigram' or 'bpe', got {model_type!r}.")
  if vocab_size <= NUM_SPECIAL_TOKENS:
    raise ValueError(f"vocab_size must exceed the {NUM_SPECIAL_TOKENS} "
                     f"reserved ids, got {vocab_size}.")
  if max_sentences is not None and max_sentences < 1:
    raise ValueError(
        f"max_sentences must be >= 1 or None, got {max_sentences}.")

  start = time.perf_counter()
  lines = _evenly_spaced(_training_lines(texts, MAX_LINE_BYTES), max_sentences)
  if not lines:
    raise ValueError("No non-empty text to train the tokenizer on.")
  writer = io.BytesIO()
  try:
    # model_writer keeps the model in memory: with a model_prefix, the
    # (temporary) prefix would be recorded inside the model and break
    # byte-identical retraining.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        split_digits=split_digits,
        num_threads=num_threads or DEFAULT_TRAIN_THREADS,
        max_sentence_length=MAX_LINE_BYTES,
        input_sentence_size=0,  # No random sampling: we subsampled above.
        shuffle_input_sentence=False,
        pad_id=PAD_ID, pad_piece=SPECIAL_PIECES[PAD_ID],
        unk_id=UNK_ID, unk_piece=SPECIAL_PIECES[UNK_ID],
        bos_id=-1, eos_id=-1,  # [CLS]/[SEP] are added by packing instead.
        control_symbols=list(SPECIAL_PIECES[CLS_ID:]),
        minloglevel=1,  # Warnings only; the INFO log is thousands of lines.
    )
  except RuntimeError as e:
    if high := _TOO_HIGH.search(str(e)):
      raise VocabSizeError(
          f"Cannot train {model_path}: vocab_size={vocab_size} is more than "
          f"its {len(lines)} lines of text support (at most {high.group(2)} "
          f"pieces with model_type={model_type!r}); lower vocab_size, or "
          "give more text.", vocab_size, at_most=int(high.group(2))) from e
    if low := _TOO_LOW.search(str(e)):
      raise VocabSizeError(
          f"Cannot train {model_path}: vocab_size={vocab_size} is fewer "
          f"pieces than the characters of its text need (at least "
          f"{low.group(2)}); raise vocab_size.", vocab_size,
          at_least=int(low.group(2))) from e
    raise ValueError(
        f"SentencePiece could not train {model_path} (vocab_size={vocab_size}, "
        f"model_type={model_type!r}, {len(lines)} lines): {e}") from e
  _write_atomically(model_path, writer.getvalue())
  logging.info("Trained %s tokenizer (vocab %d) on %d lines in %.1fs: %s",
               model_type, vocab_size, len(lines), time.perf_counter() - start,
               model_path)
  return model_path


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to a temp file beside `path`, then renames it to `path`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)  # Atomic within one file system.
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


class TokenizerFileError(errors.ConfigError):
  """A tokenizer file that is not a usable model (one line, the fix)."""


class Tokenizer:
  """A SentencePiece model whose ids 0-4 are the reserved pieces.

  Picklable (it carries the model bytes) for loader worker processes.
  """

  def __init__(self, path: pathlib.Path, model_bytes: bytes):
    """Use `Tokenizer.load`; this validates `model_bytes` read from `path`."""
    self.path = path
    self._model_bytes = model_bytes
    try:
      self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    except RuntimeError as e:
      raise TokenizerFileError(
          f"{path} is not a SentencePiece model (it does not parse). Fix: "
          "point to a "
          "'.model' file written by mlm_jax.tokenizer.train_sentencepiece."
      ) from e
    self._check_special_ids()

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
    """Loads and validates a `.model` file written by train_sentencepiece."""
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(
          f"Tokenizer model {path} does not exist. Fix: train it with "
          "mlm_jax.tokenizer.train_sentencepiece(texts, model_path, "
          "vocab_size=...) or correct the path.")
    return cls(path, path.read_bytes())

  def _check_special_ids(self) -> None:
    sp = self._sp
    n = min(sp.get_piece_size(), NUM_SPECIAL_TOKENS)
    found = [sp.id_to_piece(i) for i in range(n)]
    # [PAD] and 2-4 must be control pieces, or text could produce them.
    kinds_ok = all(sp.is_unknown(i) if i == UNK_ID else sp.is_control(i)
                   for i in range(n))
    if (tuple(found) == SPECIAL_PIECES and kinds_ok
        and sp.get_piece_size() > NUM_SPECIAL_TOKENS):
      return
    held = ", ".join(f"id {i} holds {p!r}" for i, p in enumerate(found))
    want = ", ".join(f"id {i} {p!r}" for i, p in enumerate(SPECIAL_PIECES))
    raise TokenizerFileError(
        f"Tokenizer model {self.path} does not reserve mlm_jax's special ids: "
        f"{held} (vocab size {sp.get_piece_size()}); expected {want}, with "
        "[PAD]/[CLS]/[SEP]/[MASK] as control symbols. Fix: train it with "
        "mlm_jax.tokenizer.train_sentencepiece, or with SentencePiece flags "
        "--pad_id=0 --pad_piece=[PAD] --unk_id=1 --unk_piece=[UNK] "
        "--bos_id=-1 --eos_id=-1 --control_symbols=[CLS],[SEP],[MASK].")

  def __getstate__(self):
    return {"path": self.path, "model_bytes": self._model_bytes}

  def __setstate__(self, state):
    self.__init__(state["path"], state["model_bytes"])

  def __repr__(self) -> str:
    return (f"Tokenizer(path={str(self.path)!r}, vocab_size={self.vocab_size}, "
            f"fingerprint={self.fingerprint!r})")

  @property
  def vocab_size(self) -> int:
    """Number of ids, special ones included."""
    return self._sp.get_piece_size()

  @property
  def fingerprint(self) -> str:
    """First 16 hex digits of the sha256 of the model file's bytes."""
    return hashlib.sha256(self._model_bytes).hexdigest()[:16]

  def encode(self, texts: Sequence[str], *,
             num_threads: int = -1) -> list[np.ndarray]:
    """Encodes a batch of texts in SentencePiece's C++ thread pool.

    Returns one int32 array [num_pieces] per text, without [CLS]/[SEP].
    num_threads=-1 uses every core. A bare `str` is refused: it would be
    encoded as a batch of one-character texts.
    """
    if isinstance(texts, str):
      raise TypeError("encode takes a sequence of texts; wrap one text as "
                      "[text].")
    ids = self._sp.encode(list(texts), out_type=int, num_threads=num_threads)
    return [np.asarray(x, dtype=np.int32) for x in ids]

  def encode_following(self, text: str) -> np.ndarray:
    """The pieces of `text` when it directly follows other text (as after
    a [MASK] in fill-mask), as `encode` would cut them inside a document.

    `encode` treats its input as a document start and adds the
    word-boundary marker '\u2581' before it, so "s of it" would begin with a
    lone '\u2581' piece; here a text that does not start with whitespace
    continues the preceding word ('s', '\u2581of', '\u2581it').
    """
    if not text or text[:1].isspace():
      return self.encode([text])[0]
    if not hasattr(self, "_following"):
      # The same model without SentencePiece's dummy prefix (its own
      # option of the normaliser, read from the model's protobuf).
      from sentencepiece import sentencepiece_model_pb2
      proto = sentencepiece_model_pb2.ModelProto()
      proto.ParseFromString(self._model_bytes)
      proto.normalizer_spec.add_dummy_prefix = False
      self._following = spm.SentencePieceProcessor(
          model_proto=proto.SerializeToString())
    return np.asarray(self._following.encode(text, out_type=int), np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes one 1-D sequence of ids; special pieces decode to nothing."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f"decode takes one 1-D sequence, got shape {ids.shape}.")
    return self._sp.decode(ids.astype(np.int64).tolist())

  def id_to_piece(self, token_id: int) -> str:
    """The piece string of `token_id` (e.g. '[MASK]', '▁the')."""
    return self._sp.id_to_piece(int(token_id))

  def word_starts(self) -> np.ndarray:
    """[vocab_size] bool: which pieces start a word, for whole-word masking.

    A piece starts a word when it begins with SentencePiece's word-boundary
    marker '\u2581' (a space in the text); special, unknown and byte pieces
    count as starts, so no word runs across them. A tokenizer trained
    without whitespace markers has no starting ordinary piece at all.
    """
    sp = self._sp
    return np.array([
        sp.id_to_piece(i).startswith("\u2581") or sp.is_control(i)
        or sp.is_unknown(i) or sp.is_byte(i) for i in range(sp.get_piece_size())
    ], dtype=bool)
