# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Admission in the API server: what is refused (HTTP 400) and why, before
anything reaches the engine; and what is taken, rewritten or marked loose."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from vllm_kimi_tools import metrics
from vllm_kimi_tools.enforcer.admission import (
    MAX_TOOLS,
    AdmissionError,
    argument_checkers,
    build_spec,
    output_budget,
)
from vllm_kimi_tools.enforcer.schema_checks import (
    MAX_CHARS_PER_TOKEN,
    check_shape,
    composition_cycle,
    min_size,
)
from vllm_kimi_tools.enforcer.schemas import prepare_schema
from vllm_kimi_tools.tools import DeclaredTool


def obj(required: bool = True, **props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(props)
    return out


def refuse(schema: Any, match: str, **kw: Any) -> AdmissionError:
    with pytest.raises(AdmissionError, match=match) as info:
        build_spec([DeclaredTool("f", schema)], first_index=0, **kw)
    return info.value


def admit(schema: Any, **kw: Any):
    spec, notes = build_spec([DeclaredTool("f", schema)], first_index=0, **kw)
    return spec.tools[0], notes


RECURSIVE = {
    "$defs": {
        "n": {
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/n"}},
            "required": ["n"],
        },
    },
    "type": "object",
    "properties": {"n": {"$ref": "#/$defs/n"}},
    "required": ["n"],
}


def deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    return node


# -- shape ---------------------------------------------------------------------


def test_a_deep_schema_is_refused_not_recursed() -> None:
    error = refuse(deep(200), "nested deeper than 64 levels")
    assert error.reason == "schema"
    # Far past Python's recursion limit: still a clear refusal, quickly.
    huge = deep(50_000)
    start = time.perf_counter()
    refuse(huge, "nested deeper than 64 levels")
    assert time.perf_counter() - start < 0.5
    admit(deep(20))  # 40 nested containers: fine


def test_a_huge_schema_is_refused() -> None:
    props = {f"p{i}": {"type": "string"} for i in range(25_000)}
    refuse({"type": "object", "properties": props}, "more than 20000")
    with pytest.raises(ValueError, match="nested deeper"):
        check_shape([[[[1]]]], max_depth=3, max_nodes=10)


def test_too_many_tools() -> None:
    tools = [DeclaredTool(f"t{i}", {"type": "object"}) for i in range(MAX_TOOLS + 1)]
    with pytest.raises(AdmissionError, match="at most 1024") as info:
        build_spec(tools, first_index=0)
    assert info.value.reason == "request"


# -- types -----------------------------------------------------------------------


@pytest.mark.parametrize("declared", ["foo", ["string", "foo"], "Strng"])
def test_an_unknown_type_is_refused(declared) -> None:
    refuse(obj(x={"type": declared}), r"#/properties/x: type '\w+' is not a JSON")


def test_known_aliases_are_still_read() -> None:
    tool, notes = admit(obj(x={"type": "float"}, y={"type": "any"}))
    assert tool.exact
    assert any("'float' read as 'number'" in n for n in notes)


# -- no value at all ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        (RECURSIVE, r"#/\$defs/n: .*recursive with no base case"),
        (
            obj(n={"type": "integer", "enum": ["1", "2"]}),
            r"#/properties/n: .*no enum/const value fits",
        ),
        (
            obj(a={"type": "array", "minItems": 1, "items": False}),
            r"#/properties/a: .*minItems > maxItems",
        ),
        (obj(a={"anyOf": [{"type": "string", "enum": [1]}]}), "anyOf/0"),
        (
            {
                "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}},
                **obj(x={"$ref": "#/$defs/a"}),
            },
            r"cycle that never reaches a value",
        ),
        (obj(s={"type": "string", "minLength": 5, "maxLength": 2}), "minLength 5 > "),
        (obj(a={"type": "array", "minItems": 3, "maxItems": 1}), "minItems 3 > "),
    ],
)
def test_schemas_no_value_satisfies_are_refused(schema, match: str) -> None:
    assert refuse(schema, match).reason == "schema"


def test_a_recursive_schema_with_a_base_case_is_taken() -> None:
    tree = {
        "$defs": {
            "t": {
                "type": "object",
                "properties": {
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}
                },
                "required": ["kids"],
            }
        },
        **obj(t={"$ref": "#/$defs/t"}),
    }
    admit(tree)
    assert min_size(prepare_schema(tree).schema).chars == len('{"t":{"kids":[]}}')
    assert composition_cycle(tree) is None


def test_optional_parts_no_value_fits_are_not_offered() -> None:
    schema = obj(
        required=False,
        n={"type": "integer", "enum": ["1"]},
        m={"anyOf": [{"type": "string", "enum": [3]}, {"type": "null"}]},
    )
    tool, notes = admit(schema)
    grammar = json.loads(tool.grammar)
    assert "n" not in grammar["properties"]
    assert grammar["properties"]["m"]["anyOf"] == [{"type": "null"}]
    assert any("not offered" in n for n in notes)


# -- the output budget ---------------------------------------------------------------


def test_a_string_longer_than_any_output_is_refused() -> None:
    error = refuse(
        obj(s={"type": "string", "minLength": 999_999_999_999}),
        r"#/properties/s \(minLength 999999999999\).* output tokens",
    )
    assert error.reason == "budget"
    # The same with the server's own length: still refused.
    refuse(
        obj(s={"type": "string", "minLength": 600_000}), "more than", max_model_len=2048
    )
    admit(obj(s={"type": "string", "minLength": 600_000}))  # 2,345 tokens: fits


def test_a_forced_call_must_fit_in_max_tokens() -> None:
    many = obj(a={"type": "array", "items": {}, "minItems": 100_000})
    # 200,001 characters: at least 5 + 782 tokens.
    error = refuse(
        many, "needs at least 787 output tokens", choice="required", max_tokens=256
    )
    assert error.reason == "budget" and "#/properties/a (minItems 100000)" in str(error)
    refuse(many, "tool_choice names 'f'", named="f", max_tokens=256)
    # Not forced: the model may answer in text; the tool is not offered.
    spec, notes = build_spec([DeclaredTool("f", many)], first_index=0, max_tokens=256)
    assert spec.tools == () and "'f' is not offered" in notes[-1]
    assert "787 output tokens" in notes[-1] and "max_tokens 256" in notes[-1]
    admit(many, max_tokens=787)
    admit(many, choice="required", max_tokens=1000)
    admit(many, choice="required")  # max_tokens unset: the ceiling only
    # With several tools, required needs one that fits.
    small = DeclaredTool("g", obj(x={"type": "integer"}))
    build_spec(
        [DeclaredTool("f", many), small],
        first_index=0,
        choice="required",
        max_tokens=16,
    )
    with pytest.raises(AdmissionError, match="forced|within max_tokens 4"):
        build_spec([small], first_index=0, choice="required", max_tokens=4)


def test_a_pattern_counts_towards_the_shortest_call() -> None:
    schema = obj(s={"type": "string", "pattern": "^a{100000}$"})
    assert min_size(prepare_schema(schema).schema).chars == len('{"s":""}') + 100_000
    refuse(
        schema,
        r"pattern needs at least 100000 characters",
        choice="required",
        max_tokens=64,
    )
    # A short one: taken.
    admit(
        obj(s={"type": "string", "pattern": "^[a-z]+$"}),
        choice="required",
        max_tokens=8,
    )


def test_a_tool_no_call_fits_is_not_offered_and_the_rest_are() -> None:
    small = DeclaredTool("g", obj(x={"type": "integer"}))
    big = DeclaredTool("f", obj(s={"type": "string", "minLength": 10_000}))
    spec, notes = build_spec([big, small], first_index=0, max_tokens=20)
    assert spec.names() == ["g"] and any("'f' is not offered" in n for n in notes)
    # The spec goes through vllm_xargs: an empty tools list survives it.
    from vllm_kimi_tools.enforcer.spec import EnforcerSpec

    spec, _ = build_spec([big], first_index=0, max_tokens=20)
    assert EnforcerSpec.from_json(spec.to_json()).tools == ()


def test_a_remote_ref_is_refused_and_never_fetched() -> None:
    error = refuse(
        obj(x={"$ref": "http://127.0.0.1:9/schema.json"}),
        r"#/properties/x/\$ref: 'http://127.0.0.1:9/schema.json' is not in the schema",
    )
    assert error.reason == "schema"


def test_no_token_writes_more_than_the_bound(real_grammar_store) -> None:
    from vllm_kimi_tools.enforcer.lengths import count_chars

    table = real_grammar_store.table
    longest = max(
        count_chars(b)
        for i, b in enumerate(table.token_bytes)
        if i not in table.special_ids
    )
    assert longest == MAX_CHARS_PER_TOKEN


def test_output_budget_reads_every_api() -> None:
    assert output_budget(SimpleNamespace(max_completion_tokens=7, max_tokens=9)) == 7
    assert output_budget(SimpleNamespace(max_completion_tokens=None, max_tokens=9)) == 9
    assert output_budget(SimpleNamespace(max_output_tokens=5)) == 5
    assert output_budget(SimpleNamespace(max_tokens=None)) is None


# -- the grammar is built once here --------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "match"),
    [
        (obj(s={"type": "string", "pattern": "^(a)\\1$"}), "Backreference"),
        (obj(x={"$ref": "#/$defs/missing"}), "Cannot find field"),
    ],
)
def test_a_grammar_xgrammar_refuses_is_a_400(schema, match: str) -> None:
    pytest.importorskip("xgrammar")
    refuse(schema, f"the argument grammar cannot be built: .*{match}")


def test_schemas_xgrammar_would_refuse_but_are_valid_are_rewritten() -> None:
    pytest.importorskip("xgrammar")
    tool, _ = admit(
        obj(
            a={"type": "array", "minItems": 2},  # no items: any items
            b={
                "type": "array",
                "prefixItems": [True, {"type": "string"}],
                "maxItems": 1,
            },
            o={"type": "object", "properties": {"k": {}}, "minProperties": 2},
            i={"type": "integer", "minimum": 0.5, "exclusiveMaximum": 9.5},
        )
    )
    grammar = json.loads(tool.grammar)["properties"]
    assert grammar["a"]["items"] == {}
    assert grammar["b"]["prefixItems"] == [{}]
    assert grammar["o"]["additionalProperties"] is True
    assert (grammar["i"]["minimum"], grammar["i"]["maximum"]) == (1, 9)
    # Undeclared keys may repeat in the grammar: minProperties is loose there.
    assert not tool.exact


# -- through the parser's hook --------------------------------------------------------


def test_attach_counts_refusals_and_loose_tools() -> None:
    pytest.importorskip("vllm")
    from vllm_kimi_tools._compat import ChatCompletionRequest
    from vllm_kimi_tools.parser.tool_parser import attach_enforcer_spec

    def request(parameters: Any, **kw: Any):
        return ChatCompletionRequest(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": parameters},
                }
            ],
            **kw,
        )

    before = metrics.counts()
    with pytest.raises(ValueError, match="minLength"):
        attach_enforcer_spec(request(obj(s={"type": "string", "minLength": 10**12})))
    with pytest.raises(ValueError, match="max_tokens 8"):
        attach_enforcer_spec(
            request(
                obj(s={"type": "string", "minLength": 5000}),
                tool_choice="required",
                max_completion_tokens=8,
            )
        )
    attach_enforcer_spec(request(obj(x={"type": "number", "multipleOf": 0.01})))
    after = metrics.counts()

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew(f"{metrics.REFUSED_REQUESTS_TOTAL}{{budget}}") == 2
    assert grew(metrics.LOOSE_TOOLS_TOTAL) == 1


def test_argument_checkers_for_the_api_server() -> None:
    checkers = argument_checkers(
        [
            DeclaredTool("m", obj(x={"type": "float", "multipleOf": 0.0001})),
            DeclaredTool("any", obj(x={"type": "string"}), strict=False),
            DeclaredTool("bad", {"type": "array"}),
        ]
    )
    assert set(checkers) == {"m", "any"}
    assert checkers["m"]({"x": 0.0001}) == []
    assert checkers["m"]({"x": 0.00015}) == ["0.00015 is not a multiple of 0.0001"]
    assert checkers["m"]({}) == ["'x' is a required property"]
    assert checkers["any"]({"y": 1}) == []
