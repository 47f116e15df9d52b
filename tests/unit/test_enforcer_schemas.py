# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Schema preparation: normalisation, degradation notes, refusals (no xgrammar)."""

from __future__ import annotations

import json

import pytest

from tests.enforcer_kit import walle_schemas
from vllm_kimi_tools.enforcer.admission import (
    build_spec,
)
from vllm_kimi_tools.enforcer.schemas import UnusableSchemaError, prepare_schema
from vllm_kimi_tools.enforcer.spec import EnforcerSpec
from vllm_kimi_tools.tools import DeclaredTool


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("dict", "object"),
        ("HashMap", "object"),
        ("float", "number"),
        ("double", "number"),
        ("long", "integer"),
        ("tuple", "array"),
        ("ArrayList", "array"),
        ("String", "string"),
        ("char", "string"),
        ("Boolean", "boolean"),
    ],
)
def test_non_standard_types_map_to_a_superset(declared: str, expected: str) -> None:
    prepared = prepare_schema(
        {"type": "dict", "properties": {"x": {"type": declared}}, "required": ["x"]}
    )
    assert prepared.schema["type"] == "object"
    assert prepared.schema["properties"]["x"]["type"] == expected
    assert any("'dict' read as 'object'" in n for n in prepared.degraded)
    assert any(f"{declared!r} read as {expected!r}" in n for n in prepared.degraded)


def test_any_type_becomes_unconstrained() -> None:
    prepared = prepare_schema({"type": "object", "properties": {"v": {"type": "any"}}})
    assert "type" not in prepared.schema["properties"]["v"]
    assert prepared.degraded


def test_length_bounds_leave_the_grammar_but_stay_in_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 2, "maxLength": 5000000}},
    }
    prepared = prepare_schema(schema)
    assert "Length" not in prepared.grammar_json
    assert prepared.has_length_bounds
    assert prepared.schema["properties"]["s"]["maxLength"] == 5000000


def test_unenforced_keywords_are_reported() -> None:
    prepared = prepare_schema(
        {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}
    )
    assert any("uniqueItems" in n for n in prepared.degraded)


def test_false_property_is_not_offered() -> None:
    prepared = prepare_schema(
        {"type": "object", "properties": {"a": {"type": "string"}, "b": False}}
    )
    assert "b" not in prepared.schema["properties"]


def test_required_key_without_schema_gets_any_value() -> None:
    prepared = prepare_schema(
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["z"]}
    )
    assert prepared.schema["properties"]["z"] == {}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"type": "string"}, "must describe a JSON object"),
        ("not a schema", "must be a JSON Schema object"),
        ({"type": 3}, "type must be a string"),
        (
            {"type": "object", "properties": {"a": False}, "required": ["a"]},
            "required but its schema is false",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "maxLength": -1}},
            },
            "non-negative integer",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 2}},
            },
            "minLength 5 > maxLength 2",
        ),
        (
            {
                "type": "object",
                "properties": {},
                "required": ["a"],
                "additionalProperties": False,
            },
            "not allowed by 'additionalProperties: false'",
        ),
        ({"type": "object", "properties": {"a": {"enum": "x"}}}, "invalid JSON Schema"),
    ],
)
def test_unusable_schemas_are_refused(parameters, message: str) -> None:
    with pytest.raises(UnusableSchemaError, match=message):
        prepare_schema(parameters)


def test_strict_false_and_missing_parameters_mean_any_object() -> None:
    for prepared in (
        prepare_schema({"type": "object", "properties": {"a": {}}}, strict=False),
        prepare_schema(None),
    ):
        assert json.loads(prepared.grammar_json) == {"type": "object"}


@pytest.mark.parametrize(("case", "schema"), walle_schemas())
def test_every_walle_schema_prepares(case: str, schema) -> None:
    prepared = prepare_schema(schema, require_object=False)
    json.loads(prepared.grammar_json)


def test_build_spec_round_trips_and_refuses_bad_requests() -> None:
    tools = [
        DeclaredTool("a", {"type": "object"}),
        DeclaredTool("b", None, strict=False),
    ]
    spec, _ = build_spec(tools, first_index=4, choice="required", parallel=False)
    again = EnforcerSpec.from_json(spec.to_json())
    assert again == spec
    assert again.names() == ["a", "b"] and again.first_index == 4
    named, _ = build_spec(tools, first_index=0, named="b")
    assert named.names() == ["b"] and named.choice == "named"
    with pytest.raises(ValueError, match="not declared"):
        build_spec(tools, first_index=0, named="zzz")
    with pytest.raises(ValueError, match="declared twice"):
        build_spec([*tools, DeclaredTool("a")], first_index=0)
    with pytest.raises(ValueError, match="tool 'x'"):
        build_spec([DeclaredTool("x", {"type": "array"})], first_index=0)
    with pytest.raises(ValueError, match="version"):
        EnforcerSpec.from_json('{"v": 99, "tools": []}')


def _string(**kw) -> dict:
    return {"type": "object", "properties": {"s": {"type": "string", **kw}}}


def test_enum_values_outside_the_length_bounds_are_not_offered() -> None:
    prepared = prepare_schema(_string(enum=["ab", "abcd", 7], maxLength=3))
    # 'abcd' is too long and 7 is not a string: neither is ever valid.
    assert prepared.schema["properties"]["s"]["enum"] == ["ab"]
    assert json.loads(prepared.grammar_json)["properties"]["s"]["enum"] == ["ab"]
    untyped = prepare_schema(
        {
            "type": "object",
            "properties": {"s": {"enum": ["ab", "abcd", 7], "maxLength": 3}},
        }
    )
    assert untyped.schema["properties"]["s"]["enum"] == ["ab", 7]
    with pytest.raises(UnusableSchemaError, match="no enum value"):
        prepare_schema(_string(enum=["abcd"], maxLength=3))
    with pytest.raises(UnusableSchemaError, match="const"):
        prepare_schema(_string(const="x", minLength=2))


def test_format_gives_way_to_length_bounds() -> None:
    prepared = prepare_schema(_string(format="date-time", maxLength=30))
    assert "format" not in json.loads(prepared.grammar_json)["properties"]["s"]
    assert any("'format' is not enforced" in n for n in prepared.degraded)
    kept = prepare_schema(_string(format="date-time"))
    assert json.loads(kept.grammar_json)["properties"]["s"]["format"] == "date-time"


def test_required_keys_without_properties_become_any_value_keys() -> None:
    prepared = prepare_schema({"type": "object", "required": ["adults", "kids"]})
    assert prepared.schema["properties"] == {"adults": {}, "kids": {}}
    assert prepared.schema["additionalProperties"] is True
    assert len(prepared.degraded) == 2


@pytest.mark.parametrize(
    ("schema", "path", "spans"),
    [
        (_string(maxLength=3), ("s",), ((0, 3),)),
        (_string(minLength=2), ("s",), ((2, None),)),
        (_string(), ("s",), None),
        # anyOf of free strings: the union of their lengths
        (
            {"anyOf": [{"type": "string", "maxLength": 2}, {"minLength": 5}]},
            (),
            ((0, 2), (5, None)),
        ),
        (
            {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "null"}]},
            (),
            ((0, 2),),
        ),
        # a free branch: an enum branch's lengths are not offered to it
        (
            {"anyOf": [{"type": "string", "maxLength": 2}, {"enum": ["hello"]}]},
            (),
            ((0, 2),),
        ),
        # only enums: their exact lengths
        ({"anyOf": [{"enum": ["ab", 3]}, {"const": "abcd"}]}, (), ((2, 2), (4, 4))),
        ({"anyOf": [{"type": "string", "maxLength": 2}, {}]}, (), None),
        (
            {
                "type": "object",
                "properties": {"l": {"type": "array", "items": {"maxLength": 1}}},
            },
            ("l", 4),
            ((0, 1),),
        ),
    ],
)
def test_string_lengths(schema, path, spans) -> None:
    from vllm_kimi_tools.enforcer.paths import string_lengths

    found = string_lengths(schema, path)
    assert (found.spans if found else None) == spans


# -- composition xgrammar would get wrong -----------------------------------


def _props(prepared) -> dict:
    return json.loads(prepared.grammar_json)["properties"]


def test_keywords_beside_any_of_move_into_each_branch() -> None:
    """xgrammar drops keywords beside anyOf (``{"pattern": "^a", "anyOf":
    [...]}`` accepted "b"): they are merged into every branch."""
    prepared = prepare_schema(
        {
            "type": "object",
            "properties": {
                "s": {
                    "type": "string",
                    "pattern": "^a",
                    "anyOf": [{"format": "email"}, {"enum": ["ab", "b"]}],
                }
            },
        }
    )
    assert _props(prepared)["s"] == {
        "anyOf": [
            {"format": "email", "type": "string", "pattern": "^a"},
            {"enum": ["ab", "b"], "type": "string", "pattern": "^a"},
        ]
    }
    assert prepared.exact
    # A branch the keywords exclude is dropped (exact).
    typed = prepare_schema(
        _string(enum=["a", "b"], anyOf=[{"const": "a"}, {"type": "null"}])
    )
    assert _props(typed)["s"] == {
        "anyOf": [{"const": "a", "type": "string", "enum": ["a", "b"]}]
    }
    assert typed.exact
    # Branches that conflict with the keywords: loose.
    clash = prepare_schema(
        _string(pattern="^a", anyOf=[{"pattern": "b"}, {"type": "integer"}])
    )
    assert not clash.exact and "beside 'anyOf'" in clash.loose[0]


def test_all_of_is_merged_recursively() -> None:
    prepared = prepare_schema(
        {
            "type": "object",
            "properties": {
                "x": {
                    "allOf": [
                        {"allOf": [{"type": "integer"}, {"minimum": 2}]},
                        {"maximum": 9, "description": "d"},
                    ]
                }
            },
        }
    )
    assert _props(prepared)["x"] == {
        "type": "integer",
        "minimum": 2,
        "maximum": 9,
        "description": "d",
    }
    assert prepared.exact
    # Branches that cannot be merged exactly stay, and are loose.
    clash = prepare_schema(
        {
            "type": "object",
            "properties": {"x": {"allOf": [{"pattern": "^a"}, {"pattern": "b$"}]}},
        }
    )
    assert not clash.exact and "allOf" in clash.loose[0]
    # Branches no value satisfies together: refused, with where.
    with pytest.raises(UnusableSchemaError, match="properties/x/allOf: no value"):
        prepare_schema(
            {
                "type": "object",
                "properties": {
                    "x": {"allOf": [{"type": "string"}, {"type": "integer"}]}
                },
            }
        )


def test_keywords_beside_a_ref_are_merged_into_its_target() -> None:
    prepared = prepare_schema(
        {
            "$defs": {"name": {"type": "string", "pattern": "^[a-z]+$"}},
            "type": "object",
            "properties": {
                "n": {"$ref": "#/$defs/name", "maxLength": 8, "description": "x"}
            },
        }
    )
    node = prepared.schema["properties"]["n"]
    assert node["pattern"] == "^[a-z]+$" and node["maxLength"] == 8
    assert "$ref" not in node and node["description"] == "x"
    # Annotations beside a $ref change nothing: it stays a $ref.
    plain = prepare_schema(
        {
            "$defs": {"name": {"type": "string"}},
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/name", "title": "t"}},
        }
    )
    assert plain.schema["properties"]["n"]["$ref"] == "#/$defs/name"
    assert plain.exact


@pytest.mark.parametrize(
    ("branches", "exact"),
    [
        ([{"type": "string"}, {"type": "integer"}], True),
        ([{"type": "integer"}, {"type": "number"}], False),  # 1 is both
        ([{"type": "string"}, {"type": "string", "maxLength": 3}], False),
        ([{"const": "a"}, {"enum": [1, 2]}], True),
        (
            [
                {
                    "type": "object",
                    "properties": {"k": {"const": "a"}},
                    "required": ["k"],
                },
                {
                    "type": "object",
                    "properties": {"k": {"const": "b"}},
                    "required": ["k"],
                },
            ],
            True,
        ),
    ],
)
def test_one_of_is_exact_only_when_its_branches_are_disjoint(branches, exact):
    prepared = prepare_schema(
        {"type": "object", "properties": {"x": {"oneOf": branches}}}
    )
    assert prepared.exact is exact, prepared.loose


@pytest.mark.parametrize(
    ("node", "exact", "grammar"),
    [
        (
            {"type": "number", "multipleOf": 5},
            True,
            {"type": "integer", "multipleOf": 5},
        ),
        (
            {"type": "integer", "multipleOf": 3.0},
            True,
            {"type": "integer", "multipleOf": 3},
        ),
        ({"type": "number", "multipleOf": 0.0001}, False, None),
        ({"type": "integer", "multipleOf": 0.5}, False, None),
        ({"type": "integer", "multipleOf": 3, "minimum": 1}, False, None),
        (
            {"type": "integer", "minimum": -0.5, "exclusiveMaximum": 4},
            True,
            {"type": "integer", "minimum": 0, "exclusiveMaximum": 4},
        ),
    ],
)
def test_multiple_of_is_enforced_or_loose(node, exact, grammar) -> None:
    prepared = prepare_schema({"type": "object", "properties": {"x": node}})
    assert prepared.exact is exact, prepared.loose
    if grammar is not None:
        assert _props(prepared)["x"] == grammar
    else:
        assert "multipleOf" in prepared.loose[0]


def test_key_length_bounds_are_loose() -> None:
    """The Enforcer counts value characters, not key characters."""
    prepared = prepare_schema(
        {
            "type": "object",
            "propertyNames": {"maxLength": 3},
            "additionalProperties": True,
        }
    )
    assert not prepared.exact and "propertyNames" in prepared.loose[0]
    assert "maxLength" not in prepared.grammar_json


def test_a_lookaround_pattern_is_loose() -> None:
    prepared = prepare_schema(_string(pattern="(?=.*x)^[a-z]+$"))
    assert not prepared.exact and "lookahead" in prepared.loose[0]


def test_the_spec_carries_which_tools_are_exact() -> None:
    spec, _ = build_spec(
        [
            DeclaredTool(
                "a", {"type": "object", "properties": {"n": {"type": "number"}}}
            ),
            DeclaredTool(
                "b", {"type": "object", "properties": {"n": {"multipleOf": 0.1}}}
            ),
        ],
        first_index=0,
    )
    again = EnforcerSpec.from_json(spec.to_json())
    assert [t.exact for t in again.tools] == [True, False]
    assert again == spec


def test_number_bounds_beyond_64_bits_are_refused() -> None:
    """xgrammar's range grammars leave no writable number past them."""
    with pytest.raises(UnusableSchemaError, match=r"minimum 1e\+308 is beyond"):
        prepare_schema(_string(type="number", minimum=1e308))
    assert prepare_schema(_string(type="number", minimum=-1e18)).exact


def test_min_properties_over_undeclared_keys_is_loose() -> None:
    """Undeclared keys may repeat in the grammar, and repeats count once."""
    prepared = prepare_schema(
        {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "minProperties": 3,
        }
    )
    assert not prepared.exact and "minProperties" in prepared.loose[0]
    declared = prepare_schema(
        {
            "type": "object",
            "properties": {"a": {}, "b": {}},
            "required": ["a", "b"],
            "minProperties": 2,
        }
    )
    assert declared.exact
