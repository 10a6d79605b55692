"""Cleaning docstrings into prose: the rules of the offline corpus.

"Prose" here means running English text, written for a human reader: the
sentences and paragraphs of a docstring or pydoc help topic. Everything else
a docstring holds is dropped: doctests and their output, code blocks, reST
directives other than admonitions, tables, headings, rules, and the
parameter names and types of "Args:"/numpy/reST field lists (their
descriptions are kept). A masked language model learns English from what is
left; code, tables and identifiers would teach it a different distribution
of tokens, and repeated example output would be learnt twice.

A cleaned document is a sequence of paragraphs, each joined into a single
line from its wrapped lines, with inline reST markup replaced by the text it
renders as, separated by exactly one blank line (PARAGRAPH_SEPARATOR).
Paragraphs that read as code rather than English are dropped, and so is a
whole document that is too short or not mostly in Latin script
(`clean_docstring` returns "" for it).

These rules shape the corpus file, so changing them must bump
`offline.CORPUS_VERSION`, the part of the cache key that stands for them.
"""
from __future__ import annotations

import re

# Shorter documents are mostly one-line summaries: too little context for MLM.
MIN_WORDS = 20
PARAGRAPH_SEPARATOR = "\n\n"

# Admonitions hold prose; other directives hold code, tables, images, links.
_ADMONITIONS = frozenset({"note", "warning", "tip", "hint", "important",
                          "caution", "attention", "danger", "error",
                          "admonition"})
_DIRECTIVE = re.compile(r"^\.\.(?:\s+([\w:-]+)::\s*(.*)|\s.*|)$")
_BULLET = re.compile(r"^([-*+\u2022]|\d{1,2}[.)]|\(\w\)|#\.)\s+")
_FIELD = re.compile(r"^:([^:`]+):(?:\s+|$)")  # ":param x: The x."
_TYPE_FIELD = re.compile(r"^:(?:type|rtype|vartype)\b[^:]*:")
# "x (int): "
_ARG = re.compile(r"^\*{0,2}[A-Za-z_][\w.]*(?:\s*\([^)]*\))?:(?:\s+|$)")
_TERM = re.compile(  # numpy "x, y : array_like", the description below it.
    r"^\*{0,2}[A-Za-z_][\w.]*(?:\s*,\s*\*{0,2}[A-Za-z_][\w.]*)*"
    r"\s+:(?:\s+\S.*)?$")
_RULE = re.compile(r"^[-=~^*+#_:|.`'\"\s]{3,}$")
_UNDERLINE = re.compile(r"^([-=~^*+#\"'`])\1{2,}$")
_TABLE_ROW = re.compile(r"^[|+].*[|+]$")
# Natural words (optionally capitalised or hyphenated, acronyms) with their
# punctuation; identifiers, dotted names and calls do not match.
_WORD = re.compile(
    r"^[(\"'\[]*(?:[A-Za-z][a-z]*(?:['\u2019-][A-Za-z]+)*|[A-Z]{2,}s?)"
    r"[)\]\"'.,;:!?]*$")
# Frequent English words that are not Python keywords or usual variable
# names, so that code made of `if`, `not`, `in`, `a` does not pass for prose.
_FUNCTION_WORDS = frozenset(
    "the of to that this be are it its which by on at will can should has have "
    "was were been when than then there these those their they we you your "
    "into also may must only such".split())
_CODE_CHARS = frozenset("=(){}[]<>_/\\|#$@^~`")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _content_indent(line: str) -> int:
  """Indent of a line's text, after its list bullet if any."""
  bullet = _BULLET.match(line.lstrip())
  return _indent(line) + (bullet.end() if bullet else 0)


def _block_end(lines: list[str], start: int, indent: int) -> int:
  """Index of the first non-blank line from `start` on indented <= indent."""
  while start < len(lines) and (not lines[start].strip()
                                or _indent(lines[start]) > indent):
    start += 1
  return start


def _drop_blocks(lines: list[str]) -> list[str]:
  """Blanks out doctests, code blocks, directives, tables and headings.

  Dropped lines become blank, so the text around them is never joined.
  """
  out: list[str] = []
  last = ""  # The last kept non-blank line.
  i = 0
  while i < len(lines):
    line, stripped = lines[i], lines[i].strip()
    following = lines[i + 1].strip() if i + 1 < len(lines) else ""
    directive = _DIRECTIVE.match(stripped)
    end = i + 1  # One past the last line to drop.
    if stripped.startswith("```"):  # A markdown code fence.
      while end < len(lines) and not lines[end].strip().startswith("```"):
        end += 1
      end = min(end + 1, len(lines))
    elif stripped.startswith(">>>"):  # A doctest, up to a blank line.
      while end < len(lines) and lines[end].strip():
        end += 1
    elif last.endswith("::") and _indent(line) > _content_indent(last):
      end = _block_end(lines, i, _content_indent(last))  # A literal block.
    elif directive and directive.group(1) in _ADMONITIONS:
      line, end = " " * _indent(line) + directive.group(2), i
    elif directive:
      end = _block_end(lines, i + 1, _indent(line))
    elif _UNDERLINE.match(following) and not _RULE.match(stripped):
      end += 1  # A heading and its underline.
    elif not (_RULE.match(stripped) or _TABLE_ROW.match(stripped)
              or _TYPE_FIELD.match(stripped)):
      end = i
    if end == i:
      out.append(line)
      last = line.rstrip() if stripped else last
      i += 1
    else:
      out.extend([""] * (end - i))
      i = end
  return out


def _paragraphs(lines: list[str]) -> list[str]:
  """Joins wrapped lines into one-line paragraphs.

  A paragraph ends at a blank line, a dedent, an indented line under a line
  ending with ":" (an "Args:" section), or a list bullet, field marker or
  parameter name (which are removed, and so are lines of only a type).
  """
  paragraphs: list[list[str]] = []
  previous = ""
  for i, line in enumerate(lines):
    text = line.strip()
    if not text:
      previous = ""
      continue
    indent = _indent(line)
    marker = (_TERM.match(text) or _BULLET.match(text) or _FIELD.match(text)
              or _ARG.match(text))
    text = text[marker.end():] if marker else text
    if (not previous or marker or indent < _indent(previous)
        or (indent > _indent(previous) and previous.rstrip().endswith(":"))):
      paragraphs.append([])
      following = lines[i + 1] if i + 1 < len(lines) else ""
      # A numpy "x : array_like", "name: int" or "float" with the
      # description indented below it.
      if (marker and marker.re is _TERM) or (
          0 < len(text.split()) <= 3 and text[-1] not in ".!?:"
          and (text[0].islower() or "[" in text)
          and following.strip() and _indent(following) > indent):
        text = ""
    if text:
      paragraphs[-1].append(text)
    previous = line
  return [" ".join(words) for words in paragraphs if words]


def _strip_markup(text: str) -> str:
  """Replaces inline reST markup by the text it renders as."""
  # :ref:`title <target>` -> title
  text = re.sub(r":[\w:+-]+:`([^`<]*?)\s*<[^`>]*>`", r"\1", text)
  # :func:`~a.b` -> b
  text = re.sub(r":[\w:+-]+:`~(?:[\w.]*\.)?([^`]*)`", r"\1", text)
  text = re.sub(r":[\w:+-]+:`!?([^`]*)`", r"\1", text)
  text = re.sub(r"`([^`<]*?)\s*<[^`>]*>`__?", r"\1", text)  # Hyperlinks.
  text = re.sub(r"``([^`]+)``", r"\1", text)
  text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
  text = re.sub(r"(?<!\S)\*\*(\w[^*]*\w)\*\*(?!\w)", r"\1", text)
  text = re.sub(r"\\ ", "", text)  # Escaped whitespace renders as nothing.
  text = re.sub(r"\\([\\'\"*`_|])", r"\1", text)
  text = re.sub(r"(\w)::$", r"\1:", text)  # "Example::" renders as "Example:".
  return re.sub(r"\s+::$", "", text).strip()


def is_prose_paragraph(text: str) -> bool:
  """Whether a paragraph reads as English rather than code or a table."""
  tokens = text.split()
  if not tokens:
    return False
  words = sum(1 for t in tokens if _WORD.match(t))
  code = sum(1 for c in text if c in _CODE_CHARS)
  # Summaries ("Return the sum.") may lack function words but are sentences.
  sentence = len(tokens) >= 3 and text[0].isupper() and text[-1] in ".!?"
  return (words >= 0.7 * len(tokens) and code <= 0.03 * len(text)
          and (sentence or any(t.lower() in _FUNCTION_WORDS for t in tokens)))


def is_prose_document(text: str) -> bool:
  """Whether a cleaned document is long enough and mostly in Latin script."""
  letters = [c for c in text if c.isalpha()]
  latin = sum(1 for c in letters if c < "\u0250" or "\u1e00" <= c <= "\u1eff")
  return len(text.split()) >= MIN_WORDS and latin >= 0.9 * len(letters)


def clean_docstring(text: str) -> str:
  """A docstring (or help topic) as prose paragraphs, or "" if not prose.

  Paragraphs are single lines joined by PARAGRAPH_SEPARATOR.
  """
  paragraphs = map(_strip_markup,
                   _paragraphs(_drop_blocks(text.expandtabs(8).splitlines())))
  document = PARAGRAPH_SEPARATOR.join(
      p for p in paragraphs if is_prose_paragraph(p))
  return document if is_prose_document(document) else ""
