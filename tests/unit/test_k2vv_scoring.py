# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The K2VV simulation's pure parts: scenarios, stream accumulation, scoring."""

from __future__ import annotations

import json

import jsonschema
import pytest

from kimi_testbed import wire
from kimi_testbed.corpora import bfcl_cases, json_schema_from_bfcl
from kimi_testbed.k2vv import accumulate_stream
from kimi_testbed.k2vv_sim import judge, summarize
from kimi_testbed.scenarios import (
    CORRECT,
    correct_scenarios,
    failure_scenarios,
    suite,
)

pytest.importorskip("bfcl_eval")

# Output failure modes of failure-modes-and-peers.md the suite must cover.
MODES = {
    "undeclared tool (from history)",  # C1
    "wrong types",  # C2
    "missing required key",  # C2
    "empty arguments",  # C2, K2VV's empty-parameters rule
    "extra key",  # C2
    "enum / range violation",  # C2
    "string-encoded arguments",  # B10
    "arguments not JSON",  # B11
    "marker inside a JSON string",  # xgrammar hole
    "non-canonical id (search:N)",  # B1/B16
    "non-canonical id (functions_x_N)",  # B16
    "non-canonical id (call_…)",  # B16
    "duplicate ids",  # B18
    "bare call (no section)",  # B14
    "unterminated call",  # B12
    "text after the section",  # B13
    "several calls",  # B4
    "truncated by max_tokens",  # B11/B12
    "call inside <think> (section)",  # B15
    "call inside <think> (bare)",  # B15
}


def test_suite_covers_every_failure_mode_in_every_variant() -> None:
    full = failure_scenarios(full=True)
    assert {s.category for s in full} == MODES
    for mode in MODES:
        variants = {(s.stream, s.thinking) for s in full if s.category == mode}
        if mode.startswith("call inside <think>"):
            assert variants == {(False, True), (True, True)}
        else:
            assert variants == {(a, b) for a in (False, True) for b in (False, True)}
    ci = failure_scenarios(full=False)
    assert sorted(s.category for s in ci) == sorted(MODES)
    assert {s.stream for s in ci} == {False, True}
    assert {s.thinking for s in ci} == {False, True}
    assert len({s.id for s in suite("full")}) == len(suite("full"))


def test_messy_history_is_messy() -> None:
    messy = next(s for s in failure_scenarios() if "messy" in s.id)
    ids = [
        c["id"] for m in messy.messages for c in m.get("tool_calls") or [] if "id" in c
    ]
    assert ids == ["call_ab12", "search:0", "functions_search_1"]
    assert messy.history_calls == 3
    assert any(m["role"] == "tool" and "tool_call_id" not in m for m in messy.messages)
    declared = {t["function"]["name"] for t in messy.tools}
    assert "img_gen" not in declared  # called in the history only


def test_bfcl_cases_are_valid_calls_in_declared_order() -> None:
    cases = list(bfcl_cases())
    assert len(cases) > 2000
    for case in cases[::25]:
        tools = {t["function"]["name"]: t["function"]["parameters"] for t in case.tools}
        for name, args in case.calls:
            jsonschema.validate(args, tools[name])
            declared = list(tools[name].get("properties", {}))
            assert [k for k in declared if k in args] == list(args)


def test_bfcl_types_become_json_schema() -> None:
    schema = {
        "type": "dict",
        "properties": {
            "x": {"type": "float"},
            "t": {"type": "tuple"},
            "a": {"type": "any"},
        },
    }
    assert json_schema_from_bfcl(schema) == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "t": {"type": "array"}, "a": {}},
    }


def test_correct_scenarios_write_canonical_calls() -> None:
    scenarios = correct_scenarios(24)
    assert {s.category for s in scenarios} == {CORRECT}
    assert {(s.stream, s.thinking) for s in scenarios} == {
        (a, b) for a in (False, True) for b in (False, True)
    }
    for s in scenarios:
        for i, (name, args) in enumerate(s.expected_calls):
            written = json.dumps(args, ensure_ascii=False)
            assert wire.call(name, written, i) in s.output


def test_stream_accumulates_like_k2vv() -> None:
    def event(delta=None, finish=None):
        return {"choices": [{"delta": delta or {}, "finish_reason": finish}]}

    message, finish = accumulate_stream(
        [
            event({"reasoning": "hm"}),
            event({"content": "Sure"}),
            event({"content": "."}),
            event(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "functions.f:0",
                            "function": {"name": "f", "arguments": '{"a"'},
                        }
                    ]
                }
            ),
            event({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
            event(finish="tool_calls"),
            {"choices": [], "usage": {"completion_tokens": 9}},
        ]
    )
    assert finish == "tool_calls"
    assert message["content"] == "Sure." and message["reasoning"] == "hm"
    assert message["tool_calls"] == [
        {
            "id": "functions.f:0",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
        }
    ]


def _message(*calls, content=None):
    return {
        "content": content,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in calls
        ],
    }


@pytest.fixture(scope="module")
def scenario():
    return next(s for s in failure_scenarios() if s.id == "wrong types [messy]")


def _weather(args: str, call_id: str = "functions.get_weather:3"):
    return _message((call_id, "get_weather", args))


OSLO = '{"city": "Oslo", "days": 2}'


@pytest.mark.parametrize(
    ("message", "finish", "tags"),
    [
        (_weather(OSLO), "tool_calls", []),
        (_weather('{"city": "Oslo", "days": "2"}'), "tool_calls", ["schema error"]),
        (
            _message(("functions.img_gen:3", "img_gen", "{}")),
            "tool_calls",
            ["schema error"],
        ),
        (_weather('{"city": "Oslo"'), "tool_calls", ["schema error"]),
        (_weather(OSLO, "functions.get_weather:0"), "tool_calls", ["bad id"]),
        (_weather(OSLO, "get_weather:3"), "tool_calls", ["bad id"]),
        (
            _message(content="<|tool_call_begin|>functions.get_weather:3"),
            "stop",
            ["markup leaked", "call lost"],
        ),
        (_message(content="Sure."), "stop", ["call lost"]),
        # K2VV ignores responses that do not finish with tool_calls
        (_weather("{"), "length", []),
    ],
)
def test_judge(scenario, message, finish, tags) -> None:
    assert judge(scenario, message, finish).failures == tags


def test_judge_altered_correct_call() -> None:
    s = correct_scenarios(1)[0]
    ((name, args),) = s.expected_calls[:1]
    content = s.expected_content
    good = _message(
        (f"functions.{name}:0", name, json.dumps(dict(reversed(args.items())))),
        content=content,
    )
    assert judge(s, good, "tool_calls").ok  # same JSON, any key order
    changed = {**args, next(iter(args)): "something else"}
    bad = _message((f"functions.{name}:0", name, json.dumps(changed)), content=content)
    assert "altered" in judge(s, bad, "tool_calls").failures
    extra = _message((f"functions.{name}:0", name, json.dumps(args)), content="hmm")
    assert "altered" in judge(s, extra, "tool_calls").failures
    thinking = next(c for c in correct_scenarios(4) if c.thinking)
    calls = [(f"functions.{n}:{i}", n, json.dumps(a))
             for i, (n, a) in enumerate(thinking.expected_calls)]  # fmt: skip
    message = _message(*calls, content=thinking.expected_content)
    assert "altered" in judge(thinking, message, "tool_calls").failures  # lost
    message["reasoning"] = thinking.expected_reasoning
    assert judge(thinking, message, "tool_calls").ok


def test_summary_counts_like_k2vv(scenario) -> None:
    ok = _message(
        ("functions.get_weather:3", "get_weather", '{"city": "Oslo", "days": 2}')
    )
    bad = _message(("functions.get_weather:3", "get_weather", "{}"))
    results = [
        judge(scenario, ok, "tool_calls"),
        judge(scenario, bad, "tool_calls"),
        judge(scenario, ok, "tool_calls"),
        judge(scenario, _message(content="x"), "stop"),
    ]
    summary = summarize(results, 2.0)
    assert summary["k2vv"] == {
        "finish_tool_calls": 3,
        "successful_tool_calls": 2,
        "schema_accuracy": pytest.approx(2 / 3),
    }
    assert summary["finish_reasons"] == {"tool_calls": 3, "stop": 1}
    assert summary["failures"]["schema error"] == 1
    assert summary["failures"]["call lost"] == 1
    assert summary["by_category"]["wrong types"] == {
        "n": 4,
        "failed": 2,
        "tags": {"schema error": 1, "call lost": 1},
    }
