# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Cheap admission checks on a tool schema, in the API server (pure).

* :func:`check_shape`: nesting depth and size of the raw ``parameters``,
  iteratively (a 10,000-level schema is refused, never recursed into);
* :func:`composition_cycle`: a ``$ref``/``anyOf``/``allOf`` cycle that never
  steps into a property or item (``{"$ref": "#"}`` at the same place), which
  ``jsonschema`` itself would recurse into forever;
* :func:`min_size`: a lower bound on the characters of any valid instance,
  and whether one exists at all (a required key whose schema is recursive
  with no base case, a ``false`` schema, an array that needs items nothing
  allows). Both are fixpoints over the schema graph with a bounded number of
  rounds: they only ever under-estimate, so a refusal is always justified.

Tokens: no token of Kimi's vocabulary writes more than
:data:`MAX_CHARS_PER_TOKEN` characters, so a call needs at least
``ENVELOPE_TOKENS + ceil(chars / MAX_CHARS_PER_TOKEN)`` output tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Longest token of Moonshot's vocabulary, in code points (256 spaces or
# asterisks); tests/unit/test_enforcer_admission.py checks it on the real one.
MAX_CHARS_PER_TOKEN = 256
# <|tool_calls_section_begin|> <|tool_call_begin|> functions.NAME:IDX (one
# token at least) <|tool_call_argument_begin|> … <|tool_call_end|>
ENVELOPE_TOKENS = 5
INFINITE = math.inf
# Admission limits on one tool's raw parameters (docs/enforcer.md).
MAX_SCHEMA_DEPTH = 64  # nested JSON containers (jsonschema recurses ~8 frames each)
MAX_SCHEMA_NODES = 20_000  # JSON objects
# Fixpoint rounds: enough for any acyclic schema (children come first) and
# for the usual recursion; an unfinished fixpoint never refuses.
_ROUNDS = 24

_JSON_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaShapeError(ValueError):
    """A schema too deep or too large to handle."""


def check_shape(value: Any, *, max_depth: int, max_nodes: int) -> int:
    """The number of objects in ``value``; raises :class:`SchemaShapeError`
    past ``max_depth`` nested containers or ``max_nodes`` objects."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            nodes += 1
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise SchemaShapeError(f"schema nested deeper than {max_depth} levels")
        if nodes > max_nodes:
            raise SchemaShapeError(
                f"schema has more than {max_nodes} sub-schemas and objects"
            )
        stack.extend((child, depth + 1) for child in children)
    return nodes


def subschemas(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(pointer suffix, sub-schema)`` for each keyword position of ``node``."""
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        subs = node.get(key)
        if isinstance(subs, dict):
            for name, sub in subs.items():
                yield f"/{key}/{_escape(name)}", sub
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        subs = node.get(key)
        if isinstance(subs, list):
            for i, sub in enumerate(subs):
                yield f"/{key}/{i}", sub
    items = node.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            yield f"/items/{i}", sub
    elif isinstance(items, dict | bool):
        yield "/items", items
    for key in (
        "additionalProperties",
        "additionalItems",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "contains",
    ):
        sub = node.get(key)
        if isinstance(sub, dict | bool):
            yield f"/{key}", sub


def _escape(name: str) -> str:
    return str(name).replace("~", "~0").replace("/", "~1")


def resolve(root: Any, ref: str) -> Any:
    """A local ``$ref``'s target (None where it cannot be resolved)."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


@dataclass
class _Graph:
    """Every schema node reachable from the root, children before parents."""

    order: list[Any]
    where: dict[int, str]


def _graph(root: Any) -> _Graph:
    where: dict[int, str] = {}
    order: list[Any] = []
    stack: list[tuple[Any, str, bool]] = [(root, "#", False)]
    done: set[int] = set()
    while stack:
        node, pointer, ready = stack.pop()
        if not isinstance(node, dict):
            continue
        if ready:
            if id(node) not in done:
                done.add(id(node))
                order.append(node)
            continue
        if id(node) in where:
            continue
        where[id(node)] = pointer
        stack.append((node, pointer, True))
        for suffix, sub in subschemas(node):
            stack.append((sub, pointer + suffix, False))
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = resolve(root, ref)
            if isinstance(target, dict):
                stack.append((target, ref, False))
    return _Graph(order, where)


def composition_cycle(root: Any) -> str | None:
    """A cycle of ``$ref``/``anyOf``/``oneOf``/``allOf`` edges that steps
    into no property or item (the pointers around it), else None."""
    graph = _graph(root)
    color: dict[int, int] = {}  # 1: on the path, 2: done
    for start in graph.order:
        if id(start) in color:
            continue
        path: list[Any] = []
        stack: list[tuple[Any, Iterator[Any]]] = [(start, _composed(root, start))]
        color[id(start)] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            nxt = next(children, None)
            if nxt is None:
                stack.pop()
                path.pop()
                color[id(node)] = 2
                continue
            state = color.get(id(nxt))
            if state == 1:
                cycle = path[[id(p) for p in path].index(id(nxt)) :]
                return " → ".join(graph.where.get(id(p), "?") for p in [*cycle, nxt])
            if state is None:
                color[id(nxt)] = 1
                path.append(nxt)
                stack.append((nxt, _composed(root, nxt)))
    return None


def _composed(root: Any, node: dict[str, Any]) -> Iterator[Any]:
    for key in ("anyOf", "oneOf", "allOf"):
        subs = node.get(key)
        if isinstance(subs, list):
            yield from (s for s in subs if isinstance(s, dict))
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = resolve(root, ref)
        if isinstance(target, dict):
            yield target


@dataclass(frozen=True)
class Size:
    """What :func:`min_size` found: a lower bound on an instance's
    characters (``INFINITE``: no instance), and where the bulk of it is."""

    chars: float
    where: str
    why: str = ""


def min_size(root: Any) -> Size:
    """A lower bound on the JSON text length of any instance of ``root``."""
    graph = _graph(root)
    productive = _fixpoint(root, graph, _productive, False)
    if productive.get(id(root)) is False:
        where, why = _unproductive_cause(root, graph, productive)
        return Size(INFINITE, where, why)
    sizes = _fixpoint(root, graph, _size, 0)
    chars = sizes.get(id(root), 1)
    return Size(chars, *_largest_part(root, graph, sizes))


def prune_unproductive(root: Any) -> list[str]:
    """Remove, in place, optional properties and ``anyOf``/``oneOf`` branches
    that no value can satisfy (the grammar would offer them, and every call
    through them is invalid). Returns a note per removal."""
    graph = _graph(root)
    productive = _fixpoint(root, graph, _productive, False)
    notes: list[str] = []
    for node in graph.order:
        where = graph.where.get(id(node), "#")
        props = node.get("properties")
        required = node.get("required") or []
        if isinstance(props, dict):
            for name in list(props):
                sub = props[name]
                if name not in required and _never(sub, productive):
                    del props[name]
                    notes.append(f"{where}/properties/{_escape(name)}: no value fits")
        for key in ("anyOf", "oneOf"):
            subs = node.get(key)
            if isinstance(subs, list):
                kept = [b for b in subs if not _never(b, productive)]
                if kept and len(kept) < len(subs):
                    node[key] = kept
                    dropped = len(subs) - len(kept)
                    notes.append(f"{where}/{key}: {dropped} branch(es) fit no value")
        items = node.get("items")
        if isinstance(items, dict) and _never(items, productive):
            # Only the empty array (or the prefix) is possible.
            del node["items"]
            node["maxItems"] = _prefix_len(node)
            notes.append(f"{where}/items: no value fits")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and _never(extra, productive):
            node["additionalProperties"] = False
            notes.append(f"{where}/additionalProperties: no value fits")
    return notes


def _never(sub: Any, productive: dict[int, Any]) -> bool:
    return sub is False or (isinstance(sub, dict) and productive.get(id(sub)) is False)


def _fixpoint(root: Any, graph: _Graph, step: Any, start: Any) -> dict[int, Any]:
    values: dict[int, Any] = {id(n): start for n in graph.order}
    for _ in range(_ROUNDS):
        changed = False
        for node in graph.order:
            new = step(root, node, values)
            if new != values[id(node)]:
                values[id(node)] = new
                changed = True
        if not changed:
            return values
    if start is False:  # unfinished: only the nodes proven productive count
        return {k: (True if v else None) for k, v in values.items()}
    return values


def _value(sub: Any, values: dict[int, Any], default: Any) -> Any:
    if sub is True or not isinstance(sub, dict | bool):
        return default
    if sub is False:
        return None
    return values.get(id(sub), default)


def _types(node: dict[str, Any]) -> list[str]:
    declared = node.get("type")
    if declared is None:
        return list(_JSON_TYPES)
    names = declared if isinstance(declared, list) else [declared]
    return [n for n in names if n in _JSON_TYPES]


def _json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"}


def exact_values(node: dict[str, Any]) -> list[Any] | None:
    """The values ``enum`` and ``const`` allow together (None: neither)."""
    if "enum" not in node and "const" not in node:
        return None
    values = list(node["enum"]) if isinstance(node.get("enum"), list) else None
    if "const" in node:
        values = [node["const"]] if values is None or node["const"] in values else []
    return values or []


def _values(node: dict[str, Any]) -> list[Any] | None:
    """The ``enum``/``const`` values that fit the node's own type and string
    bounds (None: not an enum)."""
    values = exact_values(node)
    if values is None:
        return None
    types = set(_types(node))
    lo, hi = node.get("minLength", 0), node.get("maxLength")
    return [
        v
        for v in values
        if _json_types(v) & types
        and (
            not isinstance(v, str)
            or (lo <= len(v) and (not isinstance(hi, int) or len(v) <= hi))
        )
    ]


def _key_schema(node: dict[str, Any], key: str) -> Any:
    props = node.get("properties")
    if isinstance(props, dict) and key in props:
        return props[key]
    extra = node.get("additionalProperties", True)
    return extra


def _item_schema(node: dict[str, Any], i: int) -> Any:
    prefix = node.get("prefixItems")
    if not isinstance(prefix, list):
        prefix = node.get("items") if isinstance(node.get("items"), list) else []
    if i < len(prefix):
        return prefix[i]
    items = node.get("items", True)
    if isinstance(items, list):
        items = node.get("additionalItems", True)
    return items


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _productive(root: Any, node: dict[str, Any], values: dict[int, Any]) -> bool:
    def ok(sub: Any) -> bool:
        return bool(_value(sub, values, True))

    for key in ("anyOf", "oneOf"):
        subs = node.get(key)
        if isinstance(subs, list) and not any(ok(s) for s in subs):
            return False
    subs = node.get("allOf")
    if isinstance(subs, list) and not all(ok(s) for s in subs):
        return False
    ref = node.get("$ref")
    if isinstance(ref, str) and not ok(resolve(root, ref)):
        return False
    return _own_productive(node, ok)


def _own_productive(node: dict[str, Any], ok: Any) -> bool:
    values = _values(node)
    if values is not None:
        return bool(values)
    for t in _types(node):
        if t == "string":
            hi = node.get("maxLength")
            if not isinstance(hi, int) or _int(node.get("minLength"), 0) <= hi:
                return True
        elif t == "array":
            lo = _int(node.get("minItems"), 0)
            hi = node.get("maxItems")
            if isinstance(hi, int) and lo > hi:
                continue
            if all(
                ok(_item_schema(node, i)) for i in range(min(lo, _prefix_len(node) + 1))
            ):
                return True
        elif t == "object":
            required = [k for k in node.get("required") or [] if isinstance(k, str)]
            hi = node.get("maxProperties")
            if isinstance(hi, int) and len(set(required)) > hi:
                continue
            if all(ok(_key_schema(node, k)) for k in required):
                return True
        else:
            return True
    return False


def pattern_min_chars(node: dict[str, Any]) -> int:
    """The fewest characters a string matching ``node``'s ``pattern`` has
    (0 where unknown). Python's own regex parser measures it; ECMA-262
    syntax it reads differently or refuses only loses the bound."""
    pattern = node.get("pattern")
    if not isinstance(pattern, str) or len(pattern) > _PATTERN_MEASURED:
        return 0
    try:
        import re._parser as sre  # the parser behind ``re`` (3.11+)

        return int(sre.parse(pattern).getwidth()[0])
    except Exception:
        return 0


# Patterns longer than this are not measured (their parse is not bounded).
_PATTERN_MEASURED = 4096


def _prefix_len(node: dict[str, Any]) -> int:
    prefix = node.get("prefixItems")
    if isinstance(prefix, list):
        return len(prefix)
    items = node.get("items")
    return len(items) if isinstance(items, list) else 0


def _size(root: Any, node: dict[str, Any], values: dict[int, Any]) -> float:
    def size(sub: Any) -> float:
        found = _value(sub, values, 1)
        return INFINITE if found is None else found

    parts = [_own_size(node, size)]
    for key in ("anyOf", "oneOf"):
        subs = node.get(key)
        if isinstance(subs, list) and subs:
            parts.append(min(size(s) for s in subs))
    subs = node.get("allOf")
    if isinstance(subs, list):
        parts.extend(size(s) for s in subs)
    ref = node.get("$ref")
    if isinstance(ref, str):
        parts.append(size(resolve(root, ref)))
    return max(parts)


def _own_size(node: dict[str, Any], size: Any) -> float:
    values = _values(node)
    if values is not None:
        if not values:
            return INFINITE
        return min(
            len(json.dumps(v, separators=(",", ":"), ensure_ascii=False))
            for v in values
        )
    best = INFINITE
    for t in _types(node):
        if t == "string":
            least = max(_int(node.get("minLength"), 0), pattern_min_chars(node))
            best = min(best, 2 + least)
        elif t in ("number", "integer"):
            best = min(best, 1)
        elif t in ("boolean", "null"):
            best = min(best, 4)
        elif t == "array":
            n = _int(node.get("minItems"), 0)
            prefix = _prefix_len(node)
            items = sum(size(_item_schema(node, i)) for i in range(min(n, prefix)))
            if n > prefix:
                items += (n - prefix) * size(_item_schema(node, prefix))
            best = min(best, 2 + items + max(n - 1, 0))
        elif t == "object":
            required = list(
                dict.fromkeys(
                    k for k in node.get("required") or [] if isinstance(k, str)
                )
            )
            total = sum(
                len(json.dumps(k, ensure_ascii=False)) + 1 + size(_key_schema(node, k))
                for k in required
            )
            extra = max(_int(node.get("minProperties"), 0) - len(required), 0)
            members = len(required) + extra
            best = min(best, 2 + total + 4 * extra + max(members - 1, 0))
    return best


def _unproductive_cause(
    root: Any, graph: _Graph, productive: dict[int, Any]
) -> tuple[str, str]:
    """Follow unproductive parts from the root: (pointer, why)."""
    node: Any = root
    pointer = "#"
    seen: set[int] = set()
    while isinstance(node, dict):
        if id(node) in seen:
            return pointer, "recursive with no base case"
        seen.add(id(node))
        nxt = _bad_part(root, node, pointer, productive)
        if nxt is None:
            return pointer, _own_why(node)
        pointer, node = nxt
    return pointer, "the schema is false"


def _bad_part(
    root: Any, node: dict[str, Any], pointer: str, productive: dict[int, Any]
) -> tuple[str, Any] | None:
    """The first part of ``node`` that has no value, and its pointer."""

    def bad(sub: Any) -> bool:
        return sub is False or (
            isinstance(sub, dict) and productive.get(id(sub)) is False
        )

    ref = node.get("$ref")
    if isinstance(ref, str) and bad(resolve(root, ref)):
        return ref, resolve(root, ref)
    for i, sub in enumerate(node.get("allOf") or []):
        if bad(sub):
            return f"{pointer}/allOf/{i}", sub
    for key in ("anyOf", "oneOf"):
        subs = node.get(key)
        if isinstance(subs, list) and subs and all(bad(s) for s in subs):
            return f"{pointer}/{key}/0", subs[0]
    if _values(node) is not None:
        return None
    types = _types(node)
    if "object" in types:
        props = node.get("properties")
        for k in node.get("required") or []:
            if isinstance(k, str) and bad(_key_schema(node, k)):
                declared = isinstance(props, dict) and k in props
                suffix = f"/properties/{_escape(k)}" if declared else ""
                return f"{pointer}{suffix or '/additionalProperties'}", _key_schema(
                    node, k
                )
    if "array" in types:
        for i in range(min(_int(node.get("minItems"), 0), _prefix_len(node) + 1)):
            sub = _item_schema(node, i)
            if bad(sub):
                return f"{pointer}/items", sub
    return None


def _own_why(node: dict[str, Any]) -> str:
    values = _values(node)
    if values is not None:
        return "no enum/const value fits its type and bounds"
    if "array" in _types(node) and isinstance(node.get("maxItems"), int):
        return "minItems > maxItems"
    if "object" in _types(node):
        return "a required key has no possible value"
    return "no value satisfies it"


def _largest_part(root: Any, graph: _Graph, sizes: dict[int, Any]) -> tuple[str, str]:
    """Where most of the minimal size is (greedy descent), for messages."""
    node: Any = root
    pointer = graph.where.get(id(root), "#")
    seen: set[int] = set()
    while isinstance(node, dict) and id(node) not in seen:
        seen.add(id(node))
        best: tuple[float, str, Any] | None = None
        for suffix, sub in _required_parts(node):
            value = _value(sub, sizes, 1)
            if value is not None and (best is None or value > best[0]):
                best = (value, suffix, sub)
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = resolve(root, ref)
            value = _value(target, sizes, 1)
            if value is not None and (best is None or value > best[0]):
                best = (value, "", target)
                pointer = ref
        if best is None or not isinstance(best[2], dict):
            break
        if best[0] * 2 < sizes.get(id(node), 0):
            break  # no single part dominates
        pointer = pointer + best[1] if best[1] else pointer
        node = best[2]
    return pointer, _size_why(node)


def _required_parts(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if "object" in _types(node):
        for k in node.get("required") or []:
            if isinstance(k, str):
                yield f"/properties/{_escape(k)}", _key_schema(node, k)
    if "array" in _types(node) and _int(node.get("minItems"), 0) > 0:
        yield "/items", _item_schema(node, _prefix_len(node))


def _size_why(node: Any) -> str:
    if not isinstance(node, dict):
        return ""
    for key in ("minLength", "minItems", "minProperties"):
        if key in node:
            return f"{key} {node[key]}"
    if least := pattern_min_chars(node):
        return f"pattern needs at least {least} characters"
    return ""
