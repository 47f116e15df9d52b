# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Tool ``parameters`` schema → the schema the Enforcer compiles.

Semantics (see docs/enforcer.md for the reasoning):

* ``additionalProperties`` absent means **no undeclared keys** in the grammar
  (xgrammar's strict default). The grammar stays a subset of the schema, and
  invented keys are the commonest hallucination. ``true`` or a schema allows
  them (after the declared keys).
* Keys are written in **declared order**; optional keys may be skipped.
* String ``minLength``/``maxLength`` are removed from the compiled grammar and
  enforced by the Enforcer itself while the string is being written (xgrammar
  unrolls them: seconds of compile per distinct bound on a 163k vocabulary).
  Where a node has them, ``enum``/``const`` values outside them are dropped
  (none left: refused) and ``format`` is not enforced (a format's grammar
  could need characters the bound does not leave).
* Non-standard types (BFCL's ``dict``, ``float``, ``tuple``, ``any``...) map
  to the nearest JSON-Schema type that is a superset; each rewrite is noted.
  A type name that is neither is refused.
* Composition xgrammar would get wrong is rewritten where that is exact
  (``allOf`` merged into its parent, keywords beside ``anyOf``/``oneOf``
  moved into each branch, keywords beside ``$ref`` merged into a copy of
  its target), else noted as **loose**.
* Keywords xgrammar ignores (``uniqueItems``, ``not``, ``multipleOf`` on
  numbers...) are noted as **loose**: the grammar is then a superset of the
  schema there, and a call may not validate (:attr:`PreparedSchema.loose`).

A schema that no call could satisfy, or that cannot be built, raises
:class:`UnusableSchemaError` (the request gets HTTP 400). Every step is
bounded: the raw schema's depth and size are checked first, iteratively.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import regex as re
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from vllm_kimi_tools.enforcer import schema_checks

# Non-standard type names seen in real tool definitions (BFCL's Python, Java
# and JavaScript sets) → the JSON-Schema type that accepts every such value.
TYPE_ALIASES: dict[str, str | None] = {
    "dict": "object",
    "hashmap": "object",
    "map": "object",
    "float": "number",
    "double": "number",
    "long": "integer",
    "int": "integer",
    "tuple": "array",
    "list": "array",
    "arraylist": "array",
    "str": "string",
    "char": "string",
    "bool": "boolean",
    "any": None,  # no type constraint
    "": None,
}
JSON_TYPES = frozenset(
    {"object", "array", "string", "number", "integer", "boolean", "null"}
)
# Keywords xgrammar 0.2.8 accepts but does not enforce.
UNENFORCED_KEYWORDS = (
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "unevaluatedItems",
)
# Keywords that constrain an instance (everything else is an annotation or
# an extension, and changes nothing jsonschema checks).
ASSERTIONS = frozenset(
    {
        "type",
        "enum",
        "const",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "maxContains",
        "minContains",
        "contains",
        "maxProperties",
        "minProperties",
        "required",
        "dependentRequired",
        "properties",
        "patternProperties",
        "additionalProperties",
        "propertyNames",
        "items",
        "prefixItems",
        "additionalItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentSchemas",
        "dependencies",
        "not",
        "if",
        "then",
        "else",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$dynamicRef",
    }
)
_RANGE = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# Sub-schema-valued keywords to walk into.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "propertyNames")

MAX_SCHEMA_DEPTH = schema_checks.MAX_SCHEMA_DEPTH
MAX_SCHEMA_NODES = schema_checks.MAX_SCHEMA_NODES
# Beyond this many sub-schemas, a tool's string length bounds are not
# tracked (loose): the per-path walk stays far inside its budget below it.
MAX_LENGTH_NODES = 2_000
# A $ref target merged with its sibling keywords is copied; past this size
# it is left alone (loose).
_MAX_INLINE_NODES = 200


class UnusableSchemaError(ValueError):
    """A tool's parameters schema that no call could satisfy or be built from."""


@dataclass
class PreparedSchema:
    """What the Enforcer compiles for one tool, plus what it must do itself."""

    # Canonical JSON text handed to xgrammar (also the compile-cache key).
    grammar_json: str
    # The normalised schema with length bounds kept, for :mod:`.lengths`.
    schema: dict[str, Any]
    # Human-readable notes: every rewrite that is not exact.
    degraded: list[str] = field(default_factory=list)
    has_length_bounds: bool = False
    # The notes (a subset of ``degraded``) where the grammar is looser than
    # the schema: a call may then fail ``jsonschema``.
    loose: list[str] = field(default_factory=list)
    # False where the bounds are present but not tracked (too many nodes).
    track_lengths: bool = True
    # A lower bound on the characters of any valid arguments object.
    min_chars: float = 2
    min_chars_at: str = "#"

    @property
    def exact(self) -> bool:
        """Every call the grammar and masks allow passes ``jsonschema``
        (unless the Enforcer stands down or degrades while decoding)."""
        return not self.loose


class _Notes:
    def __init__(self) -> None:
        self.all: list[str] = []
        self.loose: list[str] = []

    def info(self, note: str) -> None:
        self.all.append(note)

    def lax(self, note: str) -> None:
        self.all.append(note)
        self.loose.append(note)


ANY_OBJECT: dict[str, Any] = {"type": "object"}


def prepare_schema(
    parameters: Any,
    *,
    strict: bool = True,
    require_object: bool = True,
    check_grammar: bool = True,
) -> PreparedSchema:
    """Normalise one tool's ``parameters`` for the Enforcer.

    ``strict=False`` (the tool's OpenAI ``strict: false``) keeps only the call
    envelope: any JSON object. ``require_object=False`` prepares a schema for
    any JSON value (tests and benchmarks on general schema suites).
    ``check_grammar``: build the grammar once with xgrammar (no tokenizer,
    milliseconds), so a schema it refuses is refused here.
    """
    if not strict or parameters is None or parameters == {} or parameters is True:
        return _finish(dict(ANY_OBJECT), _Notes(), check_grammar=False)
    if not isinstance(parameters, dict):
        raise UnusableSchemaError(
            f"parameters must be a JSON Schema object, got {type(parameters).__name__}"
        )
    try:
        schema_checks.check_shape(
            parameters, max_depth=MAX_SCHEMA_DEPTH, max_nodes=MAX_SCHEMA_NODES
        )
    except schema_checks.SchemaShapeError as e:
        raise UnusableSchemaError(str(e)) from e
    try:
        text = json.dumps(parameters, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise UnusableSchemaError(f"parameters is not plain JSON: {e}") from e
    # Clients send the same tools with every request: prepare each once.
    key = (text, require_object, check_grammar)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if isinstance(found, str):
        raise UnusableSchemaError(found)
    if found is not None:
        return dataclasses.replace(found)
    try:
        prepared = _prepare(
            json.loads(text), require_object=require_object, check_grammar=check_grammar
        )
    except RecursionError:
        message = "schema too deeply nested to process"
        _remember(key, message)
        raise UnusableSchemaError(message) from None
    except UnusableSchemaError as e:
        _remember(key, str(e))
        raise
    _remember(key, prepared)
    return dataclasses.replace(prepared)


_CACHED = 512
_cache: OrderedDict[tuple[str, bool, bool], PreparedSchema | str] = OrderedDict()
_cache_lock = threading.Lock()


def _remember(key: tuple[str, bool, bool], value: PreparedSchema | str) -> None:
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHED:
            _cache.popitem(last=False)


def _prepare(
    schema: dict[str, Any], *, require_object: bool, check_grammar: bool
) -> PreparedSchema:
    notes = _Notes()
    _normalise(schema, schema, "#", notes)
    top = schema.get("type")
    if top is None and "properties" in schema:
        schema["type"] = top = "object"
    if not require_object:
        pass
    elif top not in (None, "object") and not (
        isinstance(top, list) and "object" in top
    ):
        raise UnusableSchemaError(
            f"parameters must describe a JSON object (arguments are an object), "
            f"got type {top!r}"
        )
    elif isinstance(top, list) and top != ["object"]:
        schema["type"] = "object"
        notes.info("#: type list narrowed to 'object' (arguments are an object)")
    elif top is None and not _has_composition(schema):
        schema["type"] = "object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise UnusableSchemaError(f"invalid JSON Schema at {path}: {e.message}") from e
    cycle = schema_checks.composition_cycle(schema)
    if cycle is not None:
        raise UnusableSchemaError(
            f"{cycle}: a $ref/anyOf/allOf cycle that never reaches a value"
        )
    size = schema_checks.min_size(schema)
    if size.chars != schema_checks.INFINITE:
        for note in schema_checks.prune_unproductive(schema):
            notes.info(f"{note} (not offered)")
    if size.chars == schema_checks.INFINITE:
        raise UnusableSchemaError(f"{size.where}: no value can satisfy it ({size.why})")
    prepared = _finish(schema, notes, check_grammar=check_grammar)
    prepared.min_chars, prepared.min_chars_at = size.chars, size.where
    if size.why:
        prepared.min_chars_at += f" ({size.why})"
    return prepared


def _finish(
    schema: dict[str, Any], notes: _Notes, *, check_grammar: bool
) -> PreparedSchema:
    grammar = copy.deepcopy(schema)
    if _bounded_key_names(schema):
        # The Enforcer counts the characters of values, not of keys.
        notes.lax("#: length bounds in 'propertyNames' are not enforced")
    bounded = _strip_lengths(grammar)
    track = True
    if bounded:
        nodes = sum(1 for n in _all_nodes(schema) if isinstance(n, dict))
        if nodes > MAX_LENGTH_NODES:
            track = False
            notes.lax(
                f"#: string minLength/maxLength are not enforced ({nodes} "
                f"sub-schemas, more than {MAX_LENGTH_NODES})"
            )
        elif _has_pattern(schema):
            notes.lax(
                "#: a 'pattern' in a tool with string length bounds may need "
                "characters a bound does not leave (the bound then gives way)"
            )
    # Key order matters: properties are written in declared order.
    grammar_json = json.dumps(grammar, separators=(",", ":"))
    if check_grammar:
        _check_grammar(grammar_json)
    return PreparedSchema(
        grammar_json=grammar_json,
        schema=schema,
        degraded=notes.all,
        has_length_bounds=bounded,
        loose=notes.loose,
        track_lengths=track,
    )


_LOOKAROUND = re.compile(r"\(\?<?[=!]")
_XGRAMMAR_PREFIX = re.compile(r"^\s*\[[\d:]+\]\s+\S+:\d+:\s*")


def _check_grammar(grammar_json: str) -> None:
    """Build the grammar as the engine will (without a tokenizer)."""
    try:
        import xgrammar as xgr
    except ImportError:  # pragma: no cover - xgrammar ships with vLLM
        return
    try:
        xgr.Grammar.from_json_schema(
            grammar_json, any_whitespace=True, strict_mode=True
        )
    except Exception as e:  # xgrammar raises RuntimeError with its C++ text
        message = _XGRAMMAR_PREFIX.sub("", str(e).strip().splitlines()[0])
        raise UnusableSchemaError(
            f"the argument grammar cannot be built: {message}"
        ) from None


def _has_composition(schema: dict[str, Any]) -> bool:
    return any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref"))


def _has_pattern(schema: Any) -> bool:
    return any(isinstance(n, dict) and "pattern" in n for n in _all_nodes(schema))


def _all_nodes(schema: Any) -> Iterator[Any]:
    stack = [schema]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, dict):
            stack.extend(sub for _, sub in schema_checks.subschemas(node))


def _normalise(node: Any, root: dict[str, Any], where: str, notes: _Notes) -> None:
    """Rewrite ``node`` in place into what xgrammar can compile."""
    if not isinstance(node, dict):
        return
    # An identifier only: a fragment in it upsets the metaschema, not us.
    node.pop("$id", None)
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        # Nothing is fetched for a client: a URL in a tool must not make the
        # server connect anywhere.
        raise UnusableSchemaError(
            f"{where}/$ref: {ref[:200]!r} is not in the schema (only local "
            "'#...' references are followed; nothing is fetched)"
        )
    _merge_all_of(node, where, notes)
    _distribute_siblings(node, where, notes)
    _inline_ref_siblings(node, root, where, notes)
    _normalise_type(node, where, notes)
    _normalise_array_enum(node, where, notes)
    for key in UNENFORCED_KEYWORDS:
        if key in node:
            notes.lax(f"{where}: {key!r} is not enforced while decoding")
    if isinstance(node.get("allOf"), list) and node["allOf"]:
        notes.lax(f"{where}: 'allOf' is not enforced (its branches cannot be merged)")
    if "$ref" in node and _siblings(node, "$ref"):
        notes.lax(f"{where}: keywords beside '$ref' are not enforced")
    if isinstance(node.get("pattern"), str) and _LOOKAROUND.search(node["pattern"]):
        notes.lax(f"{where}: a lookahead/lookbehind in 'pattern' is not enforced")
    _normalise_numbers(node, where, notes)
    _normalise_bounds(node, where, notes)
    _normalise_containers(node, where, notes)
    required = node.get("required")
    if "properties" not in node and isinstance(required, list) and required:
        # No properties at all: xgrammar would refuse every key, required
        # ones too. Like an object without required keys, any key may come
        # (the required ones first, with any value).
        node["properties"] = {}
        node.setdefault("additionalProperties", True)
        for name in required:
            if isinstance(name, str) and node["additionalProperties"] is not False:
                node["properties"][name] = {}
                notes.info(f"{where}: required key {name!r} has no schema (any value)")
    props = node.get("properties")
    if isinstance(props, dict):
        for name in [n for n, s in props.items() if s is False]:
            # A property that may not appear: simply not offered.
            del props[name]
            if name in (node.get("required") or []):
                raise UnusableSchemaError(
                    f"{where}/properties/{name}: required but its schema is false"
                )
        required = node.get("required")
        if isinstance(required, list) and node.get("additionalProperties") in (
            None,
            False,
        ):
            for name in required:
                if isinstance(name, str) and name not in props:
                    if node.get("additionalProperties") is False:
                        raise UnusableSchemaError(
                            f"{where}: required key {name!r} is not allowed by "
                            "'additionalProperties: false'"
                        )
                    props[name] = {}
                    notes.info(
                        f"{where}: required key {name!r} has no schema (any value)"
                    )
    if node.get("items") is False:
        del node["items"]
        node["maxItems"] = 0 if "prefixItems" not in node else len(node["prefixItems"])
    for key in _SCHEMA_LISTS:
        branches = node.get(key)
        if isinstance(branches, list):
            kept = [{} if b is True else b for b in branches]
            if key != "prefixItems":  # positions matter there (see above)
                kept = [b for b in kept if b is not False]
                if not kept:
                    raise UnusableSchemaError(f"{where}/{key}: every branch is false")
            node[key] = kept
            for i, sub in enumerate(kept):
                _normalise(sub, root, f"{where}/{key}/{i}", notes)
    if "oneOf" in node and not _disjoint(node["oneOf"], root):
        notes.lax(
            f"{where}: 'oneOf' is enforced as 'anyOf' (a value may match "
            "several branches)"
        )
    for key in _SCHEMA_MAPS:
        subs = node.get(key)
        if isinstance(subs, dict):
            for name, sub in subs.items():
                _normalise(sub, root, f"{where}/{key}/{name}", notes)
    for key in _SCHEMA_VALUES:
        _normalise(node.get(key), root, f"{where}/{key}", notes)


# -- composition -----------------------------------------------------------


def _siblings(node: dict[str, Any], *composition: str) -> list[str]:
    """Assertion keywords of ``node`` besides ``composition``."""
    return [k for k in node if k in ASSERTIONS and k not in composition]


def _merge_all_of(node: dict[str, Any], where: str, notes: _Notes) -> None:
    """Merge ``allOf`` branches (and theirs, recursively) into ``node`` where
    that is exact; the rest stay in ``allOf``."""
    pending = node.pop("allOf", None)
    if not isinstance(pending, list):
        if pending is not None:
            node["allOf"] = pending
        return
    pending = list(pending)
    kept: list[Any] = []
    while pending:
        branch = pending.pop(0)
        if branch is True or branch == {}:
            continue
        if branch is False:
            raise UnusableSchemaError(f"{where}/allOf: a branch is false")
        if not isinstance(branch, dict):
            kept.append(branch)
            continue
        inner = branch.get("allOf")
        own = {k: v for k, v in branch.items() if k != "allOf"}
        merged = copy.deepcopy(node)
        result = _merge(merged, own)
        if result is None:
            raise UnusableSchemaError(
                f"{where}/allOf: no value can satisfy every branch (their types "
                "or enums share no value)"
            )
        if result:
            node.clear()
            node.update(merged)
            if isinstance(inner, list):
                pending.extend(inner)
        else:
            kept.append(branch)
    if kept:
        node["allOf"] = kept


def _distribute_siblings(node: dict[str, Any], where: str, notes: _Notes) -> None:
    """``{"type": "string", "anyOf": [A, B]}`` → ``{"anyOf": [A+type, B+type]}``
    (xgrammar drops keywords beside ``anyOf``/``oneOf``)."""
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        others = _siblings(node, key)
        if not isinstance(branches, list) or not others:
            continue
        if "anyOf" in others or "oneOf" in others or "$ref" in others:
            notes.lax(f"{where}: keywords beside {key!r} are not enforced")
            return
        extra = {k: node[k] for k in others}
        new: list[Any] = []
        for branch in branches:
            if branch is False:
                continue
            if branch is True:
                new.append(copy.deepcopy(extra))
                continue
            merged = copy.deepcopy(branch)
            ok = _merge(merged, extra) if isinstance(branch, dict) else False
            if ok is None:
                continue  # this branch and the keywords exclude each other
            if not ok:
                notes.lax(f"{where}: keywords beside {key!r} are not enforced")
                return
            new.append(merged)
        if not new:
            notes.lax(f"{where}: keywords beside {key!r} are not enforced")
            return
        for k in others:
            del node[k]
        node[key] = new


def _inline_ref_siblings(
    node: dict[str, Any], root: dict[str, Any], where: str, notes: _Notes
) -> None:
    """``{"$ref": R, "maxLength": 3}`` → a copy of R's target with
    ``maxLength: 3`` merged in (xgrammar drops keywords beside ``$ref``)."""
    ref = node.get("$ref")
    others = _siblings(node, "$ref")
    if not isinstance(ref, str) or not others:
        return
    target = schema_checks.resolve(root, ref)
    if not isinstance(target, dict) or target is node:
        return
    try:
        size = schema_checks.check_shape(
            target, max_depth=16, max_nodes=_MAX_INLINE_NODES
        )
    except schema_checks.SchemaShapeError:
        return
    merged = copy.deepcopy(target)
    merged.pop("$defs", None)
    merged.pop("definitions", None)
    if size and _merge(merged, {k: node[k] for k in others}):
        annotations = {k: v for k, v in node.items() if k not in ASSERTIONS}
        node.clear()
        node.update(merged)
        for k, v in annotations.items():
            node.setdefault(k, v)


_MIN_KEYS = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")
_MAX_KEYS = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> bool | None:
    """Merge ``extra``'s keywords into ``into`` (in place) as a conjunction;
    False where that is not exact, None where no value can satisfy both
    (``into`` is then garbage)."""
    for key, value in extra.items():
        if key not in ASSERTIONS:
            into.setdefault(key, copy.deepcopy(value))
            continue
        if key not in into:
            into[key] = copy.deepcopy(value)
            continue
        current = into[key]
        if current == value:
            continue
        if key == "required" and isinstance(current, list) and isinstance(value, list):
            into[key] = list(dict.fromkeys([*current, *value]))
        elif (
            key == "properties"
            and isinstance(current, dict)
            and isinstance(value, dict)
        ):
            for name, sub in value.items():
                if name in current and current[name] != sub:
                    return False
                current[name] = copy.deepcopy(sub)
        elif key == "type":
            both = _type_meet(current, value)
            if not both:
                return None
            into[key] = both[0] if len(both) == 1 else both
        elif key == "enum" and isinstance(current, list) and isinstance(value, list):
            into[key] = [v for v in current if v in value]
            if not into[key]:
                return None
        elif key in _MIN_KEYS and _numbers(current, value):
            into[key] = max(current, value)
        elif key in _MAX_KEYS and _numbers(current, value):
            into[key] = min(current, value)
        else:
            return False
    # Undeclared keys: allowed by one side's rule, maybe not by the other's.
    for side in (into, extra):
        if ("additionalProperties" in side or "patternProperties" in side) and set(
            into.get("properties") or {}
        ) != set(side.get("properties") or {}):
            return False
    return True


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _type_meet(a: Any, b: Any) -> list[str]:
    left = set(a if isinstance(a, list) else [a])
    right = set(b if isinstance(b, list) else [b])
    both = left & right
    if (
        "integer" in left
        and "number" in right
        or "number" in left
        and "integer" in right
    ):
        both.add("integer")
    return sorted(t for t in both if isinstance(t, str))


def _disjoint(branches: list[Any], root: dict[str, Any]) -> bool:
    """Whether no value can match two ``oneOf`` branches (by type, or by a
    required key with a different ``const`` in each)."""
    kinds = [_value_types(_deref(branch, root)) for branch in branches]
    if all(k is not None for k in kinds) and all(
        not (a & b) for i, a in enumerate(kinds) for b in kinds[i + 1 :]
    ):
        return True
    return _discriminated(branches, root)


def _deref(node: Any, root: dict[str, Any]) -> Any:
    for _ in range(8):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            node = schema_checks.resolve(root, node["$ref"])
        else:
            break
    return node


def _value_types(node: Any) -> set[str] | None:
    """The JSON types a node's values may have (integers count as numbers);
    None where that is not plain to see."""
    if not isinstance(node, dict) or _has_composition(node):
        return None
    if "const" in node or "enum" in node:
        values = [node["const"]] if "const" in node else node.get("enum") or []
        return {_json_type(v) for v in values}
    declared = node.get("type")
    if declared is None:
        return None
    names = set(declared if isinstance(declared, list) else [declared])
    if "integer" in names:
        names = (names - {"integer"}) | {"number"}
    return names


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _discriminated(branches: list[Any], root: dict[str, Any]) -> bool:
    consts: list[dict[str, Any]] = []
    for branch in branches:
        target = _deref(branch, root)
        if not isinstance(target, dict):
            return False
        props = target.get("properties") or {}
        required = set(target.get("required") or [])
        found = {}
        for name, sub in props.items():
            if name in required and isinstance(sub, dict):
                if "const" in sub:
                    found[name] = json.dumps(sub["const"], sort_keys=True)
                elif isinstance(sub.get("enum"), list) and len(sub["enum"]) == 1:
                    found[name] = json.dumps(sub["enum"][0], sort_keys=True)
        consts.append(found)
    common = set.intersection(*(set(c) for c in consts)) if consts else set()
    return any(len({c[k] for c in consts}) == len(consts) for k in common)


# -- types, numbers, bounds --------------------------------------------------


def _normalise_type(node: dict[str, Any], where: str, notes: _Notes) -> None:
    declared = node.get("type")
    if declared is None:
        return
    names = declared if isinstance(declared, list) else [declared]
    mapped: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise UnusableSchemaError(f"{where}: type must be a string, got {name!r}")
        if name in JSON_TYPES:
            mapped.append(name)
            continue
        lowered = name.lower()
        if lowered not in TYPE_ALIASES and lowered not in JSON_TYPES:
            raise UnusableSchemaError(
                f"{where}: type {name!r} is not a JSON Schema type "
                f"(one of {', '.join(sorted(JSON_TYPES))})"
            )
        alias = TYPE_ALIASES.get(lowered, lowered)
        if alias is None:
            notes.info(f"{where}: type {name!r} is not JSON Schema; any value")
            del node["type"]
            return
        notes.info(f"{where}: type {name!r} read as {alias!r}")
        mapped.append(alias)
    node["type"] = mapped if isinstance(declared, list) else mapped[0]


def _normalise_array_enum(node: dict[str, Any], where: str, notes: _Notes) -> None:
    """``{"type": "array", "enum": ["a", "b"]}`` (no array can match) means
    the items' enum: a common slip in real tool definitions."""
    values = node.get("enum")
    items = node.get("items", {})
    if (
        node.get("type") == "array"
        and isinstance(values, list)
        and values
        and not any(isinstance(v, list) for v in values)
        and isinstance(items, dict)
        and "enum" not in items
    ):
        node["items"] = {**items, "enum": node.pop("enum")}
        notes.info(f"{where}: 'enum' of scalars on an array read as its items' enum")


_GRAMMAR_NUMBER_LIMIT = 2**63


def _normalise_numbers(node: dict[str, Any], where: str, notes: _Notes) -> None:
    """Bounds xgrammar chokes on, and ``multipleOf`` where it is exact."""
    for key in _RANGE:
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UnusableSchemaError(f"{where}: {key} must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            del node[key]
        elif abs(value) > _GRAMMAR_NUMBER_LIMIT:
            # xgrammar's range grammars are built for 64-bit magnitudes; past
            # them a bound can leave no writable number.
            raise UnusableSchemaError(
                f"{where}: {key} {value:g} is beyond what the argument grammar "
                "supports (magnitudes up to 2^63)"
            )
    step = node.get("multipleOf")
    integral = _numbers(step) and float(step).is_integer() and step > 0
    if integral and node.get("type") == "number":
        # Multiples of an integer: an integer grammar is an exact subset.
        node["type"] = "integer"
    if node.get("type") == "integer":
        # xgrammar wants whole-number bounds on integers.
        for key, rounding in (("minimum", math.ceil), ("maximum", math.floor)):
            value = node.get(key)
            if isinstance(value, float) and math.isfinite(value):
                node[key] = int(rounding(value))
        for key, to, rounding, offset in (
            ("exclusiveMinimum", "minimum", math.floor, 1),
            ("exclusiveMaximum", "maximum", math.ceil, -1),
        ):
            value = node.get(key)
            if isinstance(value, float) and math.isfinite(value):
                bound = int(rounding(value)) + offset
                del node[key]
                old = node.get(to)
                node[to] = (
                    bound
                    if old is None
                    else (max(old, bound) if offset > 0 else min(old, bound))
                )
        if integral:
            node["multipleOf"] = int(step)
    if "multipleOf" in node:
        if node.get("type") != "integer" or not integral:
            notes.lax(f"{where}: 'multipleOf' on numbers is not enforced")
        elif any(k in node for k in _RANGE):
            notes.lax(f"{where}: 'multipleOf' together with a range is not enforced")


def _fit_values_to_type(node: dict[str, Any]) -> None:
    """Drop ``enum`` values the node's own ``type`` refuses (xgrammar would
    offer them); none left: admission finds the node has no value."""
    declared = node.get("type")
    values = node.get("enum")
    if declared is None or not isinstance(values, list):
        return
    types = set(declared if isinstance(declared, list) else [declared])
    if "number" in types:
        types.add("integer")
    node["enum"] = [v for v in values if _instance_types(v) & types]


def _instance_types(value: Any) -> set[str]:
    kind = _json_type(value)
    if kind == "number" and (
        isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    ):
        return {"number", "integer"}
    return {kind}


def _normalise_bounds(node: dict[str, Any], where: str, notes: _Notes) -> None:
    """String length bounds: checked, and applied to enum/const/format."""
    _fit_values_to_type(node)
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        value = node.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise UnusableSchemaError(
                f"{where}: {key} must be a non-negative integer, got {value!r}"
            )
    lo, hi = node.get("minLength", 0), node.get("maxLength")
    if hi is not None and lo > hi:
        raise UnusableSchemaError(f"{where}: minLength {lo} > maxLength {hi}")
    items_lo, items_hi = node.get("minItems", 0), node.get("maxItems")
    if items_hi is not None and items_lo > items_hi:
        raise UnusableSchemaError(f"{where}: minItems {items_lo} > maxItems {items_hi}")
    if "minLength" not in node and "maxLength" not in node:
        return
    _fit_values_to_lengths(node, lo, hi, where)
    if "format" in node:
        # A format's grammar may need more (or fewer) characters than the
        # bounds leave, a dead end no mask can see coming; the bounds win.
        del node["format"]
        notes.info(
            f"{where}: 'format' is not enforced together with minLength/maxLength"
        )


def _normalise_containers(node: dict[str, Any], where: str, notes: _Notes) -> None:
    """Arrays and objects xgrammar refuses to build though they are valid."""
    prefix = node.get("prefixItems")
    if isinstance(prefix, list):
        # Positions no item can take, or past maxItems, are never written.
        if False in prefix:
            cut = prefix.index(False)
            prefix = prefix[:cut]
            node["maxItems"] = min(node.get("maxItems", cut), cut)
        most = node.get("maxItems")
        if isinstance(most, int) and len(prefix) > most:
            prefix = prefix[:most]
        node["prefixItems"] = [{} if p is True else p for p in prefix]
        if not node["prefixItems"]:
            del node["prefixItems"]
    prefix = node.get("prefixItems")
    prefix_len = len(prefix) if isinstance(prefix, list) else 0
    if (
        "items" not in node
        and isinstance(node.get("minItems"), int)
        and node["minItems"] > prefix_len
    ):
        node["items"] = {}  # absent items: any item (xgrammar: none)
    props = node.get("properties")
    declared = len(props) if isinstance(props, dict) else 0
    wanted = node.get("minProperties")
    if (
        isinstance(wanted, int)
        and wanted > declared
        and "additionalProperties" not in node
        and "patternProperties" not in node
    ):
        node["additionalProperties"] = True  # undeclared keys are needed
    if isinstance(wanted, int) and wanted > 1 and node.get("additionalProperties"):
        notes.lax(
            f"{where}: 'minProperties' with undeclared keys is not enforced (the "
            "grammar cannot keep those keys distinct)"
        )


def _fit_values_to_lengths(
    node: dict[str, Any], lo: int, hi: int | None, where: str
) -> None:
    """Keep only the ``enum``/``const`` strings within the node's bounds.

    The others are invalid anyway, and offering them could lead the grammar
    where the length mask allows nothing.
    """

    def fits(value: Any) -> bool:
        return not isinstance(value, str) or (
            lo <= len(value) and (hi is None or len(value) <= hi)
        )

    if "const" in node and not fits(node["const"]):
        raise UnusableSchemaError(
            f"{where}: const {node['const']!r} is not within minLength/maxLength"
        )
    values = node.get("enum")
    if isinstance(values, list) and values:
        kept = [v for v in values if fits(v)]
        if not kept:
            raise UnusableSchemaError(
                f"{where}: no enum value is within minLength/maxLength"
            )
        node["enum"] = kept


def _bounded_key_names(schema: Any) -> bool:
    """Whether a ``propertyNames`` schema anywhere has string length bounds."""
    for node in _all_nodes(schema):
        names = node.get("propertyNames") if isinstance(node, dict) else None
        if isinstance(names, dict) and any(
            isinstance(n, dict) and ("minLength" in n or "maxLength" in n)
            for n in _all_nodes(names)
        ):
            return True
    return False


def _strip_lengths(schema: Any) -> bool:
    """Remove string length bounds in place; True if any were present."""
    found = False
    for node in _all_nodes(schema):
        if isinstance(node, dict):
            for key in ("minLength", "maxLength"):
                if key in node:
                    del node[key]
                    found = True
    return found
