"""Tests of the docstring cleaning rules (mlm_jax/data/prose.py)."""

import pytest

from mlm_jax.data import prose

DOCSTRING = '''Compute the thing from the other thing, which is a long sentence
wrapped over two lines of the docstring.

Example::

    x = compute(1)
    y = x + 2

This second paragraph is plain English prose about the computation and
it should be kept.

>>> f()
This output line reads as English, but it is only the output of a doctest
and the reader of the documentation has seen it in the example above, so
it is not worth learning from it a second time in the corpus.

>>> for i in range(3):
...     print(i)
0
1

.. note:: The note is kept because it is prose, and it
   continues here.

.. code-block:: python

   print("hello, this is the code that must not be kept")

Parameters
----------
x : int
    The value of the input that will be used for the computation.

Args:
    y (int): The value of y that is used for the other computation.

Returns
-------
float
    The result of the computation, which is a number of some kind.
'''


def test_clean_drops_doctests_code_and_markup_and_joins_paragraphs():
  text = prose.clean_docstring(DOCSTRING)
  paragraphs = text.split(prose.PARAGRAPH_SEPARATOR)
  assert paragraphs == [
      "Compute the thing from the other thing, which is a long sentence "
      "wrapped over two lines of the docstring.",
      "This second paragraph is plain English prose about the computation "
      "and it should be kept.",
      "The note is kept because it is prose, and it continues here.",
      "The value of the input that will be used for the computation.",
      "The value of y that is used for the other computation.",
      "The result of the computation, which is a number of some kind.",
  ]
  for dropped in (">>>", "doctest", "compute(", "print", "range", "::",
                  "Parameters", "---", "int", "float", "Returns"):
    assert dropped not in text


def test_clean_strips_inline_markup():
  text = prose.clean_docstring(
      "Call :func:`~jax.numpy.dot` or ``jnp.matmul`` as shown in the "
      "`guide <https://example.com>`_, and read :class:`numpy.ndarray` for "
      "the **full** story of the arrays that are used here.")
  assert text == ("Call dot or jnp.matmul as shown in the guide, and read "
                  "numpy.ndarray for the full story of the arrays that are "
                  "used here.")


@pytest.mark.parametrize("docstring", [
    "Return the sum.",  # Too short.
    "x = compute(a, b)\nfor i in range(10):\n"
    "    y[i] = f(x, i) + g(x, i) * h(i)\n" * 3,
    "Возвращает сумму двух чисел, которые передаются в функцию в качестве "
    "аргументов, и проверяет, что оба аргумента являются числами, а не "
    "строками или другими объектами, которые нельзя сложить вместе.",
    "+-----+-----+\n| a   | b   |\n+=====+=====+\n| 1   | 2   |\n"
    "+-----+-----+\n" * 5,
])
def test_clean_rejects_what_is_not_english_prose(docstring):
  assert prose.clean_docstring(docstring) == ""
