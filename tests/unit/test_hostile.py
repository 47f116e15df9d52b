# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The hostile-input corpus, its pass rules and the soak plan (pure: no
server; the suites themselves run in tests/e2e/test_hostile_e2e.py)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from kimi_testbed.hostile import (
    ONLY_4XX,
    ORDINARY,
    cases,
    check_arguments,
    judge,
    validation_schema,
)
from kimi_testbed.stress import (
    CORRECT,
    FAILURE_MODES,
    enforcer_state,
    log_excerpt,
    soak_plan,
)


def _reply(calls: list[tuple[str, str, str]], finish: str = "tool_calls") -> dict:
    return {
        "choices": [
            {
                "finish_reason": finish,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {"name": n, "arguments": a},
                        }
                        for i, n, a in calls
                    ],
                },
            }
        ]
    }


GOOD = [("functions.get_weather:0", "get_weather", '{"city": "Oslo", "days": 2}')]


def test_corpus_covers_the_report() -> None:
    everything = cases()
    assert len({c.name for c in everything}) == len(everything)
    groups = Counter(c.group for c in everything)
    assert set(groups) >= {
        "nesting",
        "enums",
        "bounds",
        "refs",
        "lengths",
        "patterns",
        "types",
        "keywords",
        "names",
        "histories",
        "requests",
    }
    ci = cases("ci")
    assert 10 <= len(ci) < len(everything)
    issues = {c.issue for c in ci}
    assert {"engine crash", "hang", "HTTP 500", "ran to max_tokens"} <= issues
    for case in everything:  # every body serializes
        assert case.payload([1, 2], [3])


def test_non_json_numbers_are_substituted() -> None:
    (case,) = [c for c in cases() if c.name == "bounds: maximum NaN"]
    text = case.payload([1], [2]).decode()
    assert '"maximum": NaN' in text and "__NAN__" not in text


def test_a_valid_call_passes_and_a_4xx_needs_a_message() -> None:
    assert not judge(ORDINARY, 200, _reply(GOOD), 0.5).problems
    assert not judge(ORDINARY, 400, {"error": {"message": "no"}}, 0.1).problems
    assert judge(ORDINARY, 400, {"error": {"message": ""}}, 0.1).problems
    assert judge(ORDINARY, 500, {"error": {"message": "boom"}}, 0.1).problems
    assert judge(ORDINARY, None, None, 35.0, "no answer in 35 s").problems


@pytest.mark.parametrize(
    "calls, finish, problem",
    [
        (
            [("functions.get_weather:0", "get_weather", '{"city": "Oslo"}')],
            "tool_calls",
            "schema error",
        ),
        (
            [("call_1", "get_weather", '{"city": "Oslo", "days": 2}')],
            "tool_calls",
            "non-canonical id",
        ),
        (
            [("functions.img:0", "img", "{}")],
            "tool_calls",
            "undeclared tool",
        ),
        ([], "length", "call lost"),
    ],
)
def test_bad_replies_fail(calls: list, finish: str, problem: str) -> None:
    verdict = judge(ORDINARY, 200, _reply(calls, finish), 0.5)
    assert any(problem in p for p in verdict.problems), verdict.problems


def test_slow_answers_and_unexpected_200s_fail() -> None:
    assert judge(ORDINARY, 200, _reply(GOOD), 31.0).problems
    (empty_name,) = [c for c in cases() if c.name == "names: empty"]
    assert empty_name.expect == ONLY_4XX
    assert judge(empty_name, 200, _reply(GOOD), 0.5).problems


def test_streamed_replies_are_accumulated() -> None:
    (case,) = [c for c in cases() if c.name == "lengths: maxLength + enum [stream]"]
    call: dict[str, Any] = {
        "index": 0,
        "id": "functions.probe:0",
        "type": "function",
        "function": {"name": "probe", "arguments": '{"x": '},
    }
    events = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "function": {"arguments": '"short"}'}}
                        ]
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        },
    ]
    assert not judge(case, 200, events, 0.5).problems
    too_long = json.loads(json.dumps(events))
    too_long[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] = (
        '"much longer"}'
    )
    assert judge(case, 200, too_long, 0.5).problems


def test_validation_schema_reads_types_as_the_server_should() -> None:
    assert validation_schema({"type": ["string", "foo"]}) == {"type": ["string"]}
    assert validation_schema({"type": "foo"}) == {}
    assert validation_schema({"type": "dict"}) == {"type": "object"}
    assert validation_schema(None) == {"type": "object"}
    assert check_arguments(validation_schema({"type": "object"}), '{"a": 1}') is None


def test_check_arguments() -> None:
    unicode = {"type": "object", "properties": {"x": {"pattern": "^\\p{L}+$"}}}
    assert check_arguments(unicode, '{"x": "Oslo"}') is None
    assert "schema error" in check_arguments(unicode, '{"x": "Oslo1"}')
    remote = {"properties": {"x": {"$ref": "http://127.0.0.1:9/s.json"}}}
    assert "cannot be checked" in check_arguments(remote, '{"x": 1}')
    assert "not JSON" in check_arguments({}, "{x: 1}")
    assert "not an object" in check_arguments({}, "[1]")
    assert "not valid JSON Schema" in check_arguments({"type": 5}, "{}")


def test_soak_plan_mixes_as_documented() -> None:
    plan = soak_plan(400, seed=3)
    assert plan == soak_plan(400, seed=3)
    modes = Counter(r.mode for r in plan)
    assert 0.15 < modes["abort"] / len(plan) < 0.25
    assert modes["stream"] and modes["plain"]
    assert all(1 <= len(r.tools) <= 20 for r in plan)
    assert max(len(r.tools) for r in plan) >= 15
    kinds = Counter(r.kind for r in plan)
    assert kinds[CORRECT] == 200 and set(kinds) == {CORRECT, *FAILURE_MODES}
    for r in plan:
        names = [t["function"]["name"] for t in r.tools]
        assert len(set(names)) == len(names)


def test_enforcer_state_says_what_is_missing() -> None:
    log = (
        "(EngineCore pid=1) INFO [logits_processor.py:356] Kimi tool Enforcer: "
        "20 requests, 312 blocked steps, 5 grammars compiled in 0.52 s (16 cache "
        "hits), stood down 6, length fallbacks 0\n"
    )
    state = enforcer_state(log)
    assert state["fields"] == {
        "requests": 20,
        "blocked_steps": 312,
        "grammars_compiled": 5,
        "compile_s": 0.52,
        "cache_hits": 16,
        "stood_down": 6,
        "length_fallbacks": 0,
    }
    assert len(state["missing"]) == 2
    richer = log.replace(
        "length fallbacks 0",
        "length fallbacks 0; holding 5 grammars (3.2 MiB), 0 live request states",
    )
    state = enforcer_state(richer)
    assert state["missing"] == []
    assert state["fields"]["grammars_held"] == 5
    assert state["fields"]["grammar_cache_mib"] == 3.2
    assert state["fields"]["live_states"] == 0
    assert enforcer_state("nothing")["line"] is None


def test_log_excerpt_collapses_repeats() -> None:
    text = "\n".join(
        ["ERROR boom", "Traceback (most recent call last):"]
        + ['  File "x.py", line 1, in f', "    for error in errors:"] * 50
        + ["RecursionError: too deep"]
    )
    excerpt = log_excerpt(text)
    assert "RecursionError: too deep" in excerpt
    assert excerpt.count("for error in errors") <= 2


def test_a_call_in_flight_at_length_is_not_judged_yet() -> None:
    from kimi_testbed.hostile import check_choice

    schemas = {"f": {"type": "object", "properties": {"q": {"type": "string"}}}}

    def message(args: str) -> dict:
        return {
            "content": None,
            "tool_calls": [
                {"id": "functions.f:0", "function": {"name": "f", "arguments": args}}
            ],
        }

    assert check_choice(message('{"q": "ab'), "length", schemas, 0) == []
    assert check_choice(message('{"q": "ab'), "tool_calls", schemas, 0)
    assert check_choice(message('{"q": 1}'), "length", schemas, 0)  # whole: judged
    wrong_id = message('{"q": "ab')
    wrong_id["tool_calls"][0]["id"] = "call_1"
    assert check_choice(wrong_id, "length", schemas, 0)
