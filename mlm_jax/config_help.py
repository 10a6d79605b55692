"""`--help` for a config file: its variants and every field, from the file.

Nothing here is written twice: the values come from calling the file's
`get_config(arg)`, the comments from its source, where every field is
commented once above its assignment (`# ...` then `config.a.b = value`).
Blocks built by a call (`config.masking = masking.default_config()`) are
followed into that function's source, as are registries filled in a loop
(`for name, module in REGISTRY.items(): c[name] = module.default_config()`).
Variants are the keywords of the `parse_arg(arg, size="base", ...)` call in
`get_config`.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib.util
import inspect
import io
import os
import textwrap
import tokenize
import types
from typing import Any, Callable

import ml_collections

from mlm_jax import config as config_lib
from mlm_jax import masking
from mlm_jax import objectives

# Fields whose value names an entry of a library table: their choices, also
# those of the variant that sets them (`config.model.size = variant.size`).
_CHOICES = {
    "model.size": tuple(config_lib.MODEL_SIZES),
    "objective.name": tuple(objectives.REGISTRY),
    "masking.strategy": tuple(masking.STRATEGIES),
    "host.allocator": tuple(config_lib.ALLOCATORS),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One option of the arg string: `size=tiny` or a bare `runlocal`."""
  name: str
  value: Any
  default: Any
  choices: tuple[str, ...]  # empty when any value of the type goes


def load(path: str) -> types.ModuleType:
  """Imports the config file at `path` as `--config` does (from the cwd)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"cannot load the config file: no file {path}")
  spec = importlib.util.spec_from_file_location("config_help_target", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _function(fn: Callable) -> tuple[ast.FunctionDef, str, str | None]:
  """The parsed function, its source, and the name it returns (if any)."""
  source = textwrap.dedent(inspect.getsource(fn))
  tree = ast.parse(source).body[0]
  root = next((n.value.id for n in ast.walk(tree) if isinstance(n, ast.Return)
               and isinstance(n.value, ast.Name)), None)
  return tree, source, root


def _comment_lines(source: str) -> dict[int, tuple[str, bool]]:
  """{line: (comment text, whether the comment is all the line holds)}."""
  out = {}
  for t in tokenize.generate_tokens(io.StringIO(source).readline):
    if t.type == tokenize.COMMENT:
      out[t.start[0]] = (t.string.lstrip("#").strip(),
                         not t.line[:t.start[1]].strip())
  return out


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
  """The object a dotted name `a.b.c` stands for in `namespace`, or None."""
  if isinstance(node, ast.Name):
    return namespace.get(node.id, getattr(builtins, node.id, None))
  if isinstance(node, ast.Attribute):
    return getattr(_resolve(node.value, namespace), node.attr, None)
  return None


def _path(node: ast.expr, root: str) -> str | None:
  """'a.b' for an assignment target `root.a.b` or `root['a'].b`, else None."""
  parts = []
  while not (isinstance(node, ast.Name) and node.id == root and parts):
    if isinstance(node, ast.Attribute):
      parts.append(node.attr)
    elif (isinstance(node, ast.Subscript)
          and isinstance(node.slice, ast.Constant)
          and isinstance(node.slice.value, str)):
      parts.append(node.slice.value)
    else:
      return None
    node = node.value
  return ".".join(reversed(parts))


def _merge(fields: dict[str, str], prefix: str, fn: Any) -> None:
  """Adds the fields of the block that `fn()` builds, under `prefix`."""
  if inspect.isfunction(fn):
    for sub, comment in field_comments(fn).items():
      fields.setdefault(f"{prefix}.{sub}", comment)


def _visit_loop(loop: ast.For, root: str, namespace: dict[str, Any],
                fields: dict[str, str]) -> None:
  """`for k, v in TABLE.items(): root[k] = v.f()`: the block of every entry."""
  it, target = loop.iter, loop.target
  if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute)
          and it.func.attr == "items" and isinstance(target, ast.Tuple)
          and all(isinstance(e, ast.Name) for e in target.elts)):
    return
  table = _resolve(it.func.value, namespace)
  key, value = (e.id for e in target.elts)
  for s in loop.body:
    if (isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Subscript)
        and ast.unparse(s.targets[0]) == f"{root}[{key}]"
        and isinstance(s.value, ast.Call)
        and isinstance(s.value.func, ast.Attribute)
        and ast.unparse(s.value.func.value) == value
        and isinstance(table, dict)):
      for k, v in table.items():
        fields.setdefault(k, "")
        _merge(fields, k, getattr(v, s.value.func.attr, None))


def _visit(body: list[ast.stmt], root: str, lines: dict[int, tuple[str, bool]],
           namespace: dict[str, Any], fields: dict[str, str]) -> None:
  """Records each field's first assignment in `body`, with its comment."""
  previous = None  # (last line, comment) of the field assigned just before
  for stmt in body:
    if isinstance(stmt, ast.For):
      _visit_loop(stmt, root, namespace, fields)
    for block in ("body", "orelse", "finalbody"):  # if, for, with, try
      _visit(getattr(stmt, block, []), root, lines, namespace, fields)
    targets = [e for t in getattr(stmt, "targets", [])
               for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
    paths = [p for p in (_path(t, root) for t in targets) if p]
    if not isinstance(stmt, ast.Assign) or not paths:
      previous = None
      continue
    above, line = [], stmt.lineno - 1
    while line in lines and lines[line][1]:
      above.insert(0, lines[line][0])
      line -= 1
    comment = " ".join(above)
    if not above and previous and previous[0] == stmt.lineno - 1:
      comment = previous[1]  # one comment above a group: `b1`, `b2`, `eps`
    trailing = " ".join(lines[n][0] for n in range(
        stmt.lineno, stmt.end_lineno + 1) if n in lines and not lines[n][1])
    new = [p for p in paths if p not in fields]
    for p in new:
      fields[p] = " ".join(filter(None, (comment, trailing)))
    previous = (stmt.end_lineno, comment)
    if isinstance(stmt.value, ast.Call):
      previous = None  # a block, not a field of the group above it
      for p in new:
        _merge(fields, p, _resolve(stmt.value.func, namespace))


def field_comments(fn: Callable) -> dict[str, str]:
  """{'a.b': comment} of every field the config function `fn` assigns.

  In the order of their first assignment; a field's comment is the comment
  lines right above that assignment (or above the group of assignments it
  ends, as `# Adam moment decay rates and epsilon.` above `b1`, `b2`,
  `eps`) and its trailing comment. Later assignments (a variant's) are
  overrides, their comments about the variant. '' when uncommented.
  """
  tree, source, root = _function(fn)
  fields = {}
  if root:
    _visit(tree.body, root, _comment_lines(source), fn.__globals__, fields)
  return fields


def variants(get_config: Callable, arg: str | None) -> list[Variant]:
  """The variants `get_config` parses with `parse_arg(arg, k=default, ...)`."""
  tree, _, root = _function(get_config)
  call = next((n for n in ast.walk(tree) if isinstance(n, ast.Assign)
               and isinstance(n.value, ast.Call)
               and ast.unparse(n.value.func).endswith("parse_arg")), None)
  if call is None:
    return []
  defaults = {k.arg: ast.literal_eval(k.value) for k in call.value.keywords}
  values = _resolve(call.value.func, get_config.__globals__)(arg, **defaults)
  holder = ast.unparse(call.targets[0])
  sets = {n.value.attr: _path(n.targets[0], root) for n in ast.walk(tree)
          if isinstance(n, ast.Assign) and isinstance(n.value, ast.Attribute)
          and ast.unparse(n.value.value) == holder}
  return [Variant(k, values[k], d, _CHOICES.get(sets.get(k), ()))
          for k, d in defaults.items()]


def leaves(config: ml_collections.ConfigDict, prefix: str = ""
           ) -> dict[str, Any]:
  """{'a.b': value} of every field that is not a block."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _show(value: Any) -> str:
  return value if isinstance(value, str) else repr(value)


def _wrap(text: str, width: int, indent: str, first: str = "") -> list[str]:
  return textwrap.wrap(text, width, initial_indent=first or indent,
                       subsequent_indent=indent, break_on_hyphens=False)


def config_help(spec: str, width: int = 79) -> str:
  """The help text of `--config <spec>` ('file.py' or 'file.py:variants').

  The config file's docstring, its variants (value, default, choices), and
  every field as `block.field = value  # comment`, grouped by block, with
  the values of this variant (and, where a variant changed one, the value
  without variants). Raises what loading the file or the variant raises.
  """
  path, sep, arg = spec.partition(":")
  module = load(path)
  config = module.get_config(*([arg] if sep else []))
  plain = leaves(module.get_config()) if sep else {}
  comments = field_comments(module.get_config)
  out = [f"Config {spec}:", ""]
  out += ["  " + l if l else l
          for l in inspect.cleandoc(module.__doc__ or "").splitlines()]
  options = variants(module.get_config, arg if sep else None)
  if options:
    out += ["", *_wrap("Variants, after the file name and ':', comma-"
                       "separated (a bare name turns an on/off one on):",
                       width, "")]
    shown = [f"{v.name}={_show(v.value)}" for v in options]
    column = max(15, *map(len, shown)) + 2
    for v, name in zip(options, shown):
      note = [f"default: {_show(v.default)}"] if v.value != v.default else []
      note += [f"one of: {', '.join(v.choices)}"] if v.choices else []
      first = f"  {name:<{column}}"
      out += _wrap("; ".join(note), width, " " * len(first), first) or [
          first.rstrip()]
  out += ["", *_wrap(f"Fields, with the values of {spec}; any can be "
                     "overridden: --config.<field>=<value>.", width, "")]
  order = {p: i for i, p in enumerate(comments)}
  fields = sorted(leaves(config).items(),
                  key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
  block, above = "", None
  for name, value in fields:
    top = name.split(".")[0] if "." in name else None
    if top != block:
      block, above = top, None
      out += [""] + ([f"{block}:"] if block else [])
      out += _wrap(comments.get(block, ""), width, "  # ")
    comment = comments.get(name, "")
    if name in _CHOICES:
      comment += f" Choices: {', '.join(_CHOICES[name])}."
    if comment != above:  # one comment above a group of fields, as written
      out += _wrap(comment.strip(), width, "  # ")
      above = comment
    line = f"  {name} = {value!r}"
    if name in plain and plain[name] != value:
      line += f"  # without variants: {plain[name]!r}"
    out.append(line)
  return "\n".join(out).rstrip() + "\n"
