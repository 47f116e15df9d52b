# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""String lengths by JSON path: sound over composition, bounded work."""

from __future__ import annotations

import time
from typing import Any

import pytest

from vllm_kimi_tools.enforcer.paths import (
    SchemaBudgetError,
    SchemaIndex,
    schema_nodes,
    string_lengths,
)


def spans(schema: Any, path: tuple) -> Any:
    found = string_lengths(schema, path)
    return found.spans if found is not None else None


def s(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


@pytest.mark.parametrize(
    ("schema", "path", "expected"),
    [
        # Two branches with patterns: whichever the grammar takes, its own
        # bound must hold, so the intersection.
        (
            {"anyOf": [s(maxLength=3, pattern="^a"), s(maxLength=7, pattern="^b")]},
            (),
            ((0, 3),),
        ),
        # A plain branch: any string of its lengths is valid by it.
        ({"anyOf": [s(maxLength=2), s(pattern="^b", maxLength=7)]}, (), ((0, 2),)),
        # An array branch's items are not the string branch's business.
        (
            {"anyOf": [s(maxLength=3), {"type": "array", "items": s(maxLength=2)}]},
            (0,),
            ((0, 2),),
        ),
        # Keywords beside anyOf apply too.
        (
            {**s(maxLength=3), "anyOf": [{"minLength": 1}, {"pattern": "x"}]},
            (),
            ((1, 3),),
        ),
        # allOf and $ref are conjunctions.
        ({"allOf": [s(minLength=2), s(maxLength=4)]}, (), ((2, 4),)),
        (
            {"$defs": {"d": s(maxLength=4)}, "$ref": "#/$defs/d", "minLength": 1},
            (),
            ((1, 4),),
        ),
        # Object-level alternatives: a key only one branch declares.
        (
            {
                "anyOf": [
                    {"type": "object", "properties": {"a": s(maxLength=2)}},
                    {"type": "object", "properties": {"b": s(maxLength=9)}},
                ]
            },
            ("a",),
            ((0, 2),),
        ),
        # A const branch has no "v": it adds nothing to the other branch's
        # bound there (found by the fuzzer; it used to lift every bound).
        (
            {"anyOf": [{"properties": {"v": s(maxLength=2)}}, {"const": 1.0}]},
            ("v",),
            ((0, 2),),
        ),
        # Inside exact values: the members' exact lengths.
        ({"enum": [{"v": "abc"}, {"v": "x"}, 3]}, ("v",), ((1, 1), (3, 3))),
        ({"const": ["ab", {"v": "abcd"}]}, (1, "v"), ((4, 4),)),
        ({"const": ["ab"]}, (1,), None),
        # No string at all there: no bound.
        ({"type": "integer"}, (), None),
        # Contradictory free branches: no length works (the mask then gives
        # way to the grammar, counted).
        ({"allOf": [s(minLength=5), s(maxLength=2)]}, (), ()),
    ],
)
def test_lengths_are_sound(schema, path, expected) -> None:
    assert spans(schema, path) == expected


def fan_out(levels: int, width: int = 3) -> dict[str, Any]:
    defs = {
        f"d{i}": {
            "anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * width + [s(maxLength=i + 1)]
        }
        for i in range(levels)
    }
    defs[f"d{levels}"] = s(maxLength=2)
    return {
        "$defs": defs,
        "type": "object",
        "properties": {"s": {"$ref": "#/$defs/d0"}},
    }


def test_a_ref_fan_out_costs_its_size_not_its_paths() -> None:
    """3**40 paths through the anyOf/$ref graph, 41 nodes."""
    schema = fan_out(40)
    start = time.perf_counter()
    index = SchemaIndex(schema, budget=2000)
    assert index.lengths(("s",)).spans == ((0, 40),)
    assert time.perf_counter() - start < 0.5


def test_a_long_ref_chain_is_walked_iteratively() -> None:
    n = 5000
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(n)}
    defs[f"d{n}"] = s(maxLength=3)
    schema = {"$defs": defs, "$ref": "#/$defs/d0"}
    assert SchemaIndex(schema, budget=4 * n).lengths(()).spans == ((0, 3),)


def test_the_budget_and_cycles_raise() -> None:
    with pytest.raises(SchemaBudgetError, match="over 10 nodes"):
        SchemaIndex(fan_out(40), budget=10).lengths(("s",))
    cycle = {
        "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, s()]}},
        "$ref": "#/$defs/a",
    }
    with pytest.raises(SchemaBudgetError, match="cycle"):
        SchemaIndex(cycle).lengths(())


def test_paths_share_memo_entries() -> None:
    """Array indices past every prefixItems, and undeclared keys, are one
    step each: a model writing thousands of items costs nothing more."""
    schema = {
        "type": "object",
        "properties": {"l": {"type": "array", "items": s(maxLength=1)}},
        "additionalProperties": {"type": "array", "items": s(maxLength=2)},
    }
    index = SchemaIndex(schema, budget=50)
    for i in range(5000):
        assert index.lengths(("l", i)).spans == ((0, 1),)
        assert index.lengths((f"k{i}", i)).spans == ((0, 2),)


def test_recursion_through_properties_is_fine_at_any_depth() -> None:
    node = {
        "$defs": {
            "n": {
                "type": "object",
                "properties": {"s": s(maxLength=3), "n": {"$ref": "#/$defs/n"}},
            }
        },
        "$ref": "#/$defs/n",
    }
    index = SchemaIndex(node, budget=100)
    for depth in range(1, 2000, 50):
        assert index.lengths(("n",) * depth + ("s",)).spans == ((0, 3),)


def test_schema_nodes_lists_what_applies() -> None:
    schema = {
        "anyOf": [
            {"type": "object", "properties": {"a": s(format="date")}},
            {"$ref": "#/$defs/o"},
        ],
        "$defs": {"o": {"type": "object", "properties": {"a": s(maxLength=2)}}},
    }
    nodes = schema_nodes(schema, ("a",))
    assert s(format="date") in nodes and s(maxLength=2) in nodes


def test_the_machine_degrades_when_the_budget_runs_out(
    tiny_store, tiny_tokenizer, monkeypatch
) -> None:
    """Past its budget a tool's lengths are dropped (counted as a ``budget``
    degrade), the rest of the call is still enforced."""
    from tests.enforcer_kit import drive, enforcer_for
    from vllm_kimi_tools.enforcer import machine

    monkeypatch.setattr(
        machine, "SchemaIndex", lambda schema: SchemaIndex(schema, budget=3)
    )
    schema = {
        "type": "object",
        "properties": {"s": {"$ref": "#/$defs/d0"}},
        **fan_out(5),
    }
    enforcer = enforcer_for(tiny_store, {"f": schema})
    text = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        '<|tool_call_argument_begin|>{"s": "abcdefgh'
    )
    assert drive(enforcer, tiny_tokenizer, text).ok
    assert enforcer.degrades == {"budget": 1}
    assert not drive(enforcer, tiny_tokenizer, '", "zz": 1').ok  # still enforced
