# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""What a tool schema says at each JSON path, with bounded work (pure).

The Enforcer needs, at the path of the string being written, the lengths it
may have (:mod:`.lengths`). A schema is a graph (``anyOf``, ``$ref``,
recursion), and the sub-schemas that apply at a path are a formula over its
nodes: ``anyOf``/``oneOf`` are alternatives, ``allOf``, ``$ref`` and a node's
own keywords all apply together::

    {"anyOf": [{"$ref": "#/$defs/a"}, {"$ref": "#/$defs/a"}]}
    → Any(Ref(a), Ref(a))      one formula node per schema node, shared

:class:`SchemaIndex` builds that formula once per schema node (a DAG: a
fan-out of ``$ref`` s costs its size, not the number of its paths), steps it
into a child key or index once per (formula, step), and memoises everything,
so a new path costs at most the schema's size. The walks are iterative (a
``$ref`` chain of any length is fine) and each lookup has a budget of
formula nodes visited (:data:`NODE_BUDGET`); beyond it, or on a cycle that
takes no step into the value (``{"$ref": "#"}`` at the same place, which
admission refuses), :class:`SchemaBudgetError` is raised and the caller
degrades. Admission keeps schemas with length bounds small enough never to
reach the budget (:data:`.schemas.MAX_LENGTH_NODES`).

**Lengths are sound.** The grammar is compiled without length bounds, so a
string the grammar allowed must be valid whatever branch it came from:

* a *plain* node (any string of an allowed length is valid: no ``pattern``,
  no ``enum``/``const``; ``format`` is an annotation) admits its lengths;
* alternatives: the union of their plain branches' lengths if there is one
  (any string of such a length is valid by that branch); else the
  intersection of every free branch's; only where every branch is an
  ``enum``/``const`` their values' exact lengths (the grammar writes those
  values exactly, so they are valid);
* conjunctions: the intersection.

So a free branch never grows to a length only another branch allows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import regex

from vllm_kimi_tools.enforcer.lengths import Lengths, Path, Span
from vllm_kimi_tools.enforcer.schema_checks import exact_values, resolve

# Formula nodes one lookup may visit before it gives up.
NODE_BUDGET = 20_000
# Seconds a patternProperties regex may take on one key.
PATTERN_TIMEOUT_S = 0.01
_PATHS_CACHED = 4096


class SchemaBudgetError(RuntimeError):
    """Walking the schema at a path needed more than its budget."""


@dataclass(frozen=True, eq=False)
class _Any:
    parts: tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class _All:
    parts: tuple[Any, ...]


@dataclass(frozen=True, eq=False)
class _Ref:
    target: Any  # the resolved sub-schema (True where it cannot be resolved)


_SUMMARY = object()  # _solve's step for a string summary

# Summary kinds: no string; only exact enum/const values; free strings
# (some constraint beyond length, e.g. a pattern); plain strings.
_NONE, _ENUM, _FREE, _PLAIN = range(4)
_ALL: tuple[Span, ...] = ((0, None),)


@dataclass(frozen=True)
class _Str:
    kind: int
    spans: tuple[Span, ...] = ()


_NO_STRING = _Str(_NONE)
_ANY_STRING = _Str(_PLAIN, _ALL)


class SchemaIndex:
    """Memoised formulas and string lengths by JSON path for one schema."""

    def __init__(self, schema: Any, *, budget: int = NODE_BUDGET) -> None:
        self.root = schema
        self.budget = budget
        self._left = budget
        self._forms: dict[int, Any] = {}
        self._keep: list[Any] = []  # keeps ids of memoised objects stable
        self._solved: dict[tuple[int, Any], Any] = {}
        self._paths: OrderedDict[Path, Any] = OrderedDict()
        self._lengths: OrderedDict[Path, Lengths | None] = OrderedDict()
        names, patterns, prefix = _scan(schema)
        self._names = names
        self._patterns = patterns
        self._max_prefix = prefix

    # -- lookups -----------------------------------------------------------

    def lengths(self, path: Path) -> Lengths | None:
        """Lengths a string at ``path`` may have (None: any). Raises
        :class:`SchemaBudgetError`."""
        if path in self._lengths:
            self._lengths.move_to_end(path)
            return self._lengths[path]
        self._left = self.budget
        summary = self._solve(self._at(path), _SUMMARY)
        if summary.kind == _NONE:
            found = None
        else:
            found = Lengths.of(summary.spans) if summary.spans else Lengths.none()
        _put(self._lengths, path, found)
        return found

    def nodes(self, path: Path) -> list[Any]:
        """The leaf sub-schemas that apply at ``path`` (dicts, ``True``)."""
        self._left = self.budget
        out: list[Any] = []
        seen: set[int] = set()
        stack = [self._at(path)]
        while stack:
            f = stack.pop()
            self._tick()
            if id(f) in seen:
                continue
            seen.add(id(f))
            if isinstance(f, _Any | _All):
                stack.extend(reversed(f.parts))
            elif isinstance(f, _Ref):
                stack.append(self._form(f.target))
            elif f is not False:
                out.append(f)
        return out

    # -- formulas ------------------------------------------------------------

    def _tick(self, n: int = 1) -> None:
        self._left -= n
        if self._left < 0:
            raise SchemaBudgetError(
                f"schema walk over {self.budget} nodes at one JSON path"
            )

    def _at(self, path: Path) -> Any:
        if not path:
            return self._form(self.root)
        found = self._paths.get(path)
        if found is not None:
            self._paths.move_to_end(path)
            return found
        # Steps from the deepest cached prefix (iterative: paths may be deep).
        i = len(path) - 1
        while i > 0 and path[:i] not in self._paths:
            i -= 1
        f = self._paths[path[:i]] if i else self._form(self.root)
        for j in range(i, len(path)):
            f = self._solve(f, self._canonical(path[j]))
            _put(self._paths, path[: j + 1], f)
        return f

    def _canonical(self, step: str | int) -> str | int:
        """Steps that select the same sub-schemas everywhere share memo
        entries: indices past every ``prefixItems``, undeclared keys."""
        if isinstance(step, int):
            return min(step, self._max_prefix)
        if step in self._names or self._patterns:
            return step
        return "\x00extra"

    def _form(self, node: Any) -> Any:
        """The formula for a schema node (iterative over nested branches)."""
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            return True  # not a schema: nothing known
        found = self._forms.get(id(node))
        if found is not None:
            return found
        stack: list[tuple[dict[str, Any], bool]] = [(node, False)]
        while stack:
            sub, ready = stack.pop()
            if id(sub) in self._forms:
                continue
            branches = _branches(sub)
            if not ready:
                stack.append((sub, True))
                stack.extend(
                    (b, False)
                    for group in branches
                    for b in group
                    if isinstance(b, dict) and id(b) not in self._forms
                )
                continue
            self._tick()
            parts: list[Any] = [sub]
            for key, group in zip(("anyOf", "oneOf", "allOf"), branches):
                forms = [self._leaf_form(b) for b in group]
                if key == "allOf":
                    parts.extend(forms)
                elif forms:
                    parts.append(_Any(tuple(forms)))
            ref = sub.get("$ref")
            if isinstance(ref, str):
                parts.append(_Ref(_resolve(self.root, ref)))
            self._forms[id(sub)] = parts[0] if len(parts) == 1 else _All(tuple(parts))
            self._keep.append(sub)
        return self._forms[id(node)]

    def _leaf_form(self, node: Any) -> Any:
        if isinstance(node, bool):
            return node
        if not isinstance(node, dict):
            return True
        return self._forms[id(node)]

    def _solve(self, f: Any, step: Any) -> Any:
        """``f`` stepped into ``step`` (a formula), or its string summary
        (``step`` is ``_SUMMARY``): a memoised, iterative post-order walk."""
        stack: list[tuple[Any, list[Any] | None]] = [(f, None)]
        active: set[int] = set()
        solved = self._solved
        while stack:
            g, parts = stack[-1]
            key = (id(g), step)
            if parts is None:
                if key in solved:
                    stack.pop()
                    continue
                direct = self._direct(g, step)
                if direct is not None:
                    solved[key] = direct
                    self._keep.append(g)
                    stack.pop()
                    continue
                if id(g) in active:
                    raise SchemaBudgetError("a schema cycle that takes no step")
                self._tick()
                parts = self._parts(g)
                stack[-1] = (g, parts)
                active.add(id(g))
                stack.extend((p, None) for p in parts if (id(p), step) not in solved)
                continue
            stack.pop()
            active.discard(id(g))
            values = [solved[(id(p), step)] for p in parts]
            solved[key] = self._combine(g, values, step)
            self._keep.append(g)
        return solved[(id(f), step)]

    def _direct(self, g: Any, step: Any) -> Any:
        """A result needing no sub-results (None: combine the parts)."""
        if isinstance(g, _Any | _All | _Ref):
            return None
        if step is _SUMMARY:
            if g is True:
                return _ANY_STRING
            if g is False:
                return _NO_STRING
            return _leaf_summary(g)
        if g is True or g is False:
            return g
        return self._leaf_child(g, step)

    def _parts(self, g: Any) -> list[Any]:
        if isinstance(g, _Ref):
            return [self._form(g.target)]
        return list(g.parts)

    def _combine(self, g: Any, values: list[Any], step: Any) -> Any:
        if isinstance(g, _Ref):
            return values[0]
        if step is _SUMMARY:
            if isinstance(g, _Any):
                return _summary_any(values)
            return _summary_all(values)
        if isinstance(g, _Any):
            return _any(values)
        return _all(values)

    def _leaf_child(self, node: dict[str, Any], step: str | int) -> Any:
        types = _types(node)
        if "enum" in node or "const" in node:
            # The grammar writes exact values whole: what may stand at the
            # step is exactly those values' members there (none: nothing).
            members = [
                v[step]
                for v in _exact_values(node)
                if (isinstance(step, int) and isinstance(v, list) and step < len(v))
                or (isinstance(step, str) and isinstance(v, dict) and step in v)
            ]
            return self._form({"enum": members}) if members else False
        if isinstance(step, int):
            if types is not None and "array" not in types:
                return False
            prefix = node.get("prefixItems")
            if not isinstance(prefix, list):
                prefix = (
                    node.get("items") if isinstance(node.get("items"), list) else []
                )
            if step < len(prefix):
                return self._form(prefix[step])
            items = node.get("items", True)
            if isinstance(items, list):
                items = node.get("additionalItems", True)
            return False if items is False else self._form(items)
        if types is not None and "object" not in types:
            return False
        props = node.get("properties")
        props = props if isinstance(props, dict) else {}
        patterns = node.get("patternProperties")
        patterns = patterns if isinstance(patterns, dict) else {}
        parts: list[Any] = []
        if step in props:
            parts.append(self._form(props[step]))
        for pattern, sub in patterns.items():
            if _pattern_matches(pattern, step):
                parts.append(self._form(sub))
        if not parts:
            extra = node.get("additionalProperties")
            if extra is None:
                # The grammar's rule: no undeclared keys where keys are declared.
                extra = not props and not patterns
            if extra is False:
                return False
            parts.append(self._form(extra))
        return parts[0] if len(parts) == 1 else _All(tuple(parts))


def _branches(node: dict[str, Any]) -> tuple[list[Any], list[Any], list[Any]]:
    out = []
    for key in ("anyOf", "oneOf", "allOf"):
        group = node.get(key)
        out.append(group if isinstance(group, list) else [])
    return out[0], out[1], out[2]


def _put(cache: OrderedDict[Path, Any], path: Path, value: Any) -> None:
    cache[path] = value
    if len(cache) > _PATHS_CACHED:
        cache.popitem(last=False)


def _any(parts: list[Any]) -> Any:
    if any(p is True for p in parts):
        return True
    kept = _unique(p for p in parts if p is not False)
    if not kept:
        return False
    return kept[0] if len(kept) == 1 else _Any(tuple(kept))


def _all(parts: list[Any]) -> Any:
    if any(p is False for p in parts):
        return False
    kept = _unique(p for p in parts if p is not True)
    if not kept:
        return True
    return kept[0] if len(kept) == 1 else _All(tuple(kept))


def _unique(parts: Iterator[Any]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for p in parts:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _types(node: dict[str, Any]) -> set[str] | None:
    declared = node.get("type")
    if declared is None:
        return None
    names = declared if isinstance(declared, list) else [declared]
    return {n for n in names if isinstance(n, str)}


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _leaf_summary(node: dict[str, Any]) -> _Str:
    types = _types(node)
    if types is not None and "string" not in types:
        return _NO_STRING
    lo = max(_int(node.get("minLength"), 0) or 0, 0)
    hi = _int(node.get("maxLength"), None)
    if hi is not None and hi < lo:
        return _NO_STRING
    if "enum" in node or "const" in node:
        lengths = {
            len(v)
            for v in _exact_values(node)
            if isinstance(v, str) and lo <= len(v) and (hi is None or len(v) <= hi)
        }
        if not lengths:
            return _NO_STRING
        return _Str(_ENUM, tuple((n, n) for n in sorted(lengths)))
    kind = _FREE if "pattern" in node else _PLAIN
    return _Str(kind, ((lo, hi),))


def _summary_any(parts: list[_Str]) -> _Str:
    live = [p for p in parts if p.kind != _NONE]
    if not live:
        return _NO_STRING
    plain = [p for p in live if p.kind == _PLAIN]
    if plain:
        return _Str(_PLAIN, _union(p.spans for p in plain))
    free = [p for p in live if p.kind == _FREE]
    if free:
        spans = free[0].spans
        for p in free[1:]:
            spans = _intersect(spans, p.spans)
        return _Str(_FREE, spans)
    return _Str(_ENUM, _union(p.spans for p in live))


def _summary_all(parts: list[_Str]) -> _Str:
    if any(p.kind == _NONE for p in parts):
        return _NO_STRING
    spans = parts[0].spans
    for p in parts[1:]:
        spans = _intersect(spans, p.spans)
    return _Str(min(p.kind for p in parts), spans)


def _union(groups: Iterator[tuple[Span, ...]]) -> tuple[Span, ...]:
    merged = Lengths.of(span for spans in groups for span in spans)
    return _ALL if merged is None else merged.spans


def _intersect(a: tuple[Span, ...], b: tuple[Span, ...]) -> tuple[Span, ...]:
    out: list[Span] = []
    for lo1, hi1 in a:
        for lo2, hi2 in b:
            lo = max(lo1, lo2)
            hi = hi1 if hi2 is None else hi2 if hi1 is None else min(hi1, hi2)
            if hi is None or lo <= hi:
                out.append((lo, hi))
    if not out:
        return ()
    merged = Lengths.of(out)
    return _ALL if merged is None else merged.spans


def _pattern_matches(pattern: Any, key: str) -> bool:
    """Whether a ``patternProperties`` regex matches ``key``; a regex that
    fails or takes too long counts as matching (one more conjunct: stricter)."""
    try:
        return regex.search(pattern, key, timeout=PATTERN_TIMEOUT_S) is not None
    except Exception:
        return True


def _resolve(root: Any, ref: str) -> Any:
    """A ``$ref``'s target; ``True`` (nothing known) where it is not local or
    cannot be resolved."""
    target = resolve(root, ref)
    return True if target is None else target


def _scan(schema: Any) -> tuple[frozenset[str], bool, int]:
    """Every declared property name, whether any ``patternProperties``
    exist, and the longest ``prefixItems`` (iterative: any depth)."""
    names: set[str] = set()
    patterns = False
    prefix = 0
    stack = [schema]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict) or id(node) in seen:
            continue
        seen.add(id(node))
        props = node.get("properties")
        if isinstance(props, dict):
            names.update(k for k in props if isinstance(k, str))
        if node.get("patternProperties"):
            patterns = True
        for key in ("prefixItems", "items"):
            if isinstance(node.get(key), list):
                prefix = max(prefix, len(node[key]))
        if "enum" in node or "const" in node:
            # Paths into exact values are steps too.
            n, p = _value_steps(_exact_values(node))
            names |= n
            prefix = max(prefix, p)
        stack.extend(node.values())
    return frozenset(names), patterns, prefix


def _exact_values(node: dict[str, Any]) -> list[Any]:
    return exact_values(node) or []


def _value_steps(values: list[Any]) -> tuple[set[str], int]:
    """Every object key in ``values`` and their longest array (iterative)."""
    names: set[str] = set()
    longest = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            names.update(k for k in value if isinstance(k, str))
            stack.extend(value.values())
        elif isinstance(value, list):
            longest = max(longest, len(value))
            stack.extend(value)
    return names, longest


def string_lengths(schema: Any, path: Path) -> Lengths | None:
    """The lengths allowed for a string written at ``path``; None if any."""
    return SchemaIndex(schema).lengths(path)


def schema_nodes(schema: Any, path: Path) -> list[Any]:
    """The leaf sub-schemas that apply at ``path`` (``True``: anything)."""
    return SchemaIndex(schema).nodes(path)


__all__ = [
    "NODE_BUDGET",
    "SchemaBudgetError",
    "SchemaIndex",
    "schema_nodes",
    "string_lengths",
]
