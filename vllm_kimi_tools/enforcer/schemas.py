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
  to the nearest JSON-Schema type that is a superset; each rewrite is reported
  as a degradation.
* Keywords xgrammar ignores (``uniqueItems``, ``not``, ``if``...) are reported
  as degradations: the grammar is then a superset of the schema there.

A schema that cannot describe a JSON object raises :class:`UnusableSchemaError`
(the request gets HTTP 400).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

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
# Sub-schema-valued keywords to walk into.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "propertyNames")


class UnusableSchemaError(ValueError):
    """A tool's parameters schema that no call could satisfy or be built from."""


@dataclass
class PreparedSchema:
    """What the Enforcer compiles for one tool, plus what it must do itself."""

    # Canonical JSON text handed to xgrammar (also the compile-cache key).
    grammar_json: str
    # The normalised schema with length bounds kept, for :mod:`.lengths`.
    schema: dict[str, Any]
    # Human-readable notes: where the grammar is looser than the schema.
    degraded: list[str] = field(default_factory=list)
    has_length_bounds: bool = False


ANY_OBJECT: dict[str, Any] = {"type": "object"}


def prepare_schema(
    parameters: Any, *, strict: bool = True, require_object: bool = True
) -> PreparedSchema:
    """Normalise one tool's ``parameters`` for the Enforcer.

    ``strict=False`` (the tool's OpenAI ``strict: false``) keeps only the call
    envelope: any JSON object. ``require_object=False`` prepares a schema for
    any JSON value (tests and benchmarks on general schema suites).
    """
    if not strict or parameters is None or parameters == {}:
        return _finish(dict(ANY_OBJECT), [])
    if parameters is True:
        return _finish(dict(ANY_OBJECT), [])
    if not isinstance(parameters, dict):
        raise UnusableSchemaError(
            f"parameters must be a JSON Schema object, got {type(parameters).__name__}"
        )
    try:
        # A deep copy that also proves the schema is plain JSON.
        schema = json.loads(json.dumps(parameters, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise UnusableSchemaError(f"parameters is not plain JSON: {e}") from e
    degraded: list[str] = []
    _normalise(schema, "#", degraded)
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
        degraded.append("#: type list narrowed to 'object' (arguments are an object)")
    elif top is None and not _has_composition(schema):
        schema["type"] = "object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise UnusableSchemaError(f"invalid JSON Schema at {path}: {e.message}") from e
    return _finish(schema, degraded)


def _finish(schema: dict[str, Any], degraded: list[str]) -> PreparedSchema:
    grammar = copy.deepcopy(schema)
    bounded = _strip_lengths(grammar)
    return PreparedSchema(
        # Key order matters: properties are written in declared order.
        grammar_json=json.dumps(grammar, separators=(",", ":")),
        schema=schema,
        degraded=degraded,
        has_length_bounds=bounded,
    )


def _has_composition(schema: dict[str, Any]) -> bool:
    return any(k in schema for k in ("anyOf", "oneOf", "allOf", "$ref"))


def _normalise(node: Any, where: str, degraded: list[str]) -> None:
    """Rewrite ``node`` in place into what xgrammar can compile."""
    if not isinstance(node, dict):
        return
    # An identifier only: a fragment in it upsets the metaschema, not us.
    node.pop("$id", None)
    _normalise_type(node, where, degraded)
    for key in UNENFORCED_KEYWORDS:
        if key in node:
            degraded.append(f"{where}: {key!r} is not enforced while decoding")
    if "allOf" in node and isinstance(node["allOf"], list) and len(node["allOf"]) > 1:
        degraded.append(f"{where}: 'allOf' with several branches is not enforced")
    if "multipleOf" in node and node.get("type") != "integer":
        degraded.append(f"{where}: 'multipleOf' on numbers is not enforced")
    _normalise_bounds(node, where, degraded)
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
                degraded.append(
                    f"{where}: required key {name!r} has no schema (any value)"
                )
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
                    degraded.append(
                        f"{where}: required key {name!r} has no schema (any value)"
                    )
    if node.get("items") is False:
        del node["items"]
        node["maxItems"] = 0 if "prefixItems" not in node else len(node["prefixItems"])
    for key in _SCHEMA_LISTS:
        branches = node.get(key)
        if isinstance(branches, list):
            kept = [b for b in branches if b is not False]
            if not kept:
                raise UnusableSchemaError(f"{where}/{key}: every branch is false")
            node[key] = kept
            for i, sub in enumerate(kept):
                _normalise(sub, f"{where}/{key}/{i}", degraded)
    for key in _SCHEMA_MAPS:
        subs = node.get(key)
        if isinstance(subs, dict):
            for name, sub in subs.items():
                _normalise(sub, f"{where}/{key}/{name}", degraded)
    for key in _SCHEMA_VALUES:
        _normalise(node.get(key), f"{where}/{key}", degraded)


def _normalise_type(node: dict[str, Any], where: str, degraded: list[str]) -> None:
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
        alias = TYPE_ALIASES.get(name.lower(), name.lower())
        if alias in JSON_TYPES:
            degraded.append(f"{where}: type {name!r} read as {alias!r}")
            mapped.append(alias)
            continue
        degraded.append(f"{where}: type {name!r} is not JSON Schema; any value")
        del node["type"]
        return
    node["type"] = mapped if isinstance(declared, list) else mapped[0]


def _normalise_bounds(node: dict[str, Any], where: str, degraded: list[str]) -> None:
    """Drop numeric keywords that are not finite JSON numbers (xgrammar chokes)."""
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UnusableSchemaError(f"{where}: {key} must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            del node[key]
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
    if "minLength" not in node and "maxLength" not in node:
        return
    _fit_values_to_lengths(node, lo, hi, where)
    if "format" in node:
        # A format's grammar may need more (or fewer) characters than the
        # bounds leave, a dead end no mask can see coming; the bounds win.
        del node["format"]
        degraded.append(
            f"{where}: 'format' is not enforced together with minLength/maxLength"
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


def _strip_lengths(node: Any) -> bool:
    """Remove string length bounds in place; True if any were present."""
    found = False
    for sub in _children(node):
        found = _strip_lengths(sub) or found
    if isinstance(node, dict):
        for key in ("minLength", "maxLength"):
            if key in node:
                del node[key]
                found = True
    return found


def _children(node: Any) -> Iterator[Any]:
    if not isinstance(node, dict):
        return
    for key in _SCHEMA_MAPS:
        subs = node.get(key)
        if isinstance(subs, dict):
            yield from subs.values()
    for key in _SCHEMA_LISTS:
        subs = node.get(key)
        if isinstance(subs, list):
            yield from subs
    for key in _SCHEMA_VALUES:
        sub = node.get(key)
        if isinstance(sub, dict):
            yield sub
