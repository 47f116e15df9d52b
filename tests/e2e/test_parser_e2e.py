# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""kimi_k2_robust through a real ``vllm serve`` (CPU), driven by the puppet."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from kimi_testbed.conversations import WEATHER_ROUND_TRIP
from kimi_testbed.k2vv import accumulate_stream
from kimi_testbed.server import VllmServer
from tests.kimi_text import (
    ARG,
    CALL,
    END,
    SEC,
    SEC_END,
    WEATHER_TOOL,
    call,
    openai_tool,
    section,
)
from vllm_kimi_tools import tokens

pytestmark = pytest.mark.e2e

TOOLS = [
    WEATHER_TOOL,
    openai_tool(
        "search",
        {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
            "additionalProperties": False,
        },
    ),
]
HISTORY = [
    *WEATHER_ROUND_TRIP,
    {"role": "user", "content": "And Tokyo, and search for news?"},
]
MARKERS = (SEC, SEC_END, CALL, ARG, END, tokens.IM_END)


def _body(server: VllmServer, output: str, **kw: Any) -> dict[str, Any]:
    return {
        "model": "tinykimi",
        "messages": HISTORY,
        "tools": TOOLS,
        "max_tokens": 200,
        "temperature": 0,
        "return_token_ids": True,
        "vllm_xargs": {"puppet_script": server.tokenize(output + tokens.IM_END)},
        **kw,
    }


def _chat(server: VllmServer, output: str, **kw: Any) -> dict[str, Any]:
    status, body = server.post("/v1/chat/completions", _body(server, output, **kw))
    assert status == 200, body
    return body["choices"][0]


def _chat_stream(server: VllmServer, output: str, **kw: Any) -> dict[str, Any]:
    """Accumulate a streamed response the way K2VV's evaluator does."""
    events = server.stream("/v1/chat/completions", _body(server, output, **kw))
    sent = Counter(
        (tc["index"], key)
        for event in events
        for choice in event.get("choices", [])
        for tc in (choice.get("delta") or {}).get("tool_calls") or []
        for key, value in (
            ("id", tc.get("id")),
            ("name", (tc.get("function") or {}).get("name")),
        )
        if value
    )
    assert all(n == 1 for n in sent.values()), f"id or name sent twice: {sent}"
    message, finish = accumulate_stream(events)
    return {**message, "finish_reason": finish}


def _summary(choice: dict[str, Any]) -> tuple:
    message = choice.get("message", choice)
    calls = [
        (
            tc["id"],
            (tc.get("function") or tc)["name"],
            json.loads((tc.get("function") or tc)["arguments"]),
        )
        for tc in message.get("tool_calls") or []
    ]
    return (message.get("content") or None, calls, choice["finish_reason"])


CASES = [
    pytest.param(
        "Checking." + section(call("get_weather:3", {"city": "Tokyo"})),
        (
            "Checking.",
            [("functions.get_weather:1", "get_weather", {"city": "Tokyo"})],
            "tool_calls",
        ),
        id="history_style_id",
    ),
    pytest.param(
        section(
            call("functions_get_weather_1", {"city": "Tokyo"}),
            call("call_8d2e", {"q": "news"}),
        ),
        (
            None,
            [
                ("functions.get_weather:1", "get_weather", {"city": "Tokyo"}),
                ("functions.search:2", "search", {"q": "news"}),
            ],
            "tool_calls",
        ),
        id="underscore_and_opaque_ids",
    ),
    pytest.param(
        section(call("functions.delete_file:0", {"path": "/etc/passwd"})),
        (None, [], "stop"),
        id="undeclared_tool_dropped",
    ),
    pytest.param(
        CALL + "functions.search:1" + ARG + '{"q": "a' + END + 'b"}' + END,
        (
            None,
            [("functions.search:1", "search", {"q": "a" + END + "b"})],
            "tool_calls",
        ),
        id="bare_call_marker_in_string",
    ),
    pytest.param(
        section(call("functions.search:1", json.dumps('{"q": "x"}'))) + "Done.",
        ("Done.", [("functions.search:1", "search", {"q": "x"})], "tool_calls"),
        id="string_args_and_trailing_text",
    ),
]


@pytest.mark.parametrize("output, expected", CASES)
def test_chat_completions(robust_server, output, expected) -> None:
    choice = _chat(robust_server, output)
    assert _summary(choice) == expected
    content = choice["message"].get("content") or ""
    assert not any(m in content for m in MARKERS)


@pytest.mark.parametrize("output, expected", CASES)
def test_streaming_matches_non_streaming(robust_server, output, expected) -> None:
    assert _summary(_chat_stream(robust_server, output)) == expected


def test_truncated_call_reports_length(robust_server) -> None:
    args = json.dumps({"q": "x" * 40})
    output = "Let me look." + section(call("functions.search:1", args))
    whole = _chat(robust_server, output, max_tokens=14)
    assert _summary(whole) == ("Let me look.", [], "length")
    # Streamed, the call's start already went out (the Enforcer is on, so
    # its arguments stream as written); "length" says it never finished.
    streamed = _chat_stream(robust_server, output, max_tokens=14)
    assert (streamed["content"], streamed["finish_reason"]) == (
        "Let me look.",
        "length",
    )
    for tc in streamed.get("tool_calls") or []:
        assert tc["id"] == "functions.search:1"
        assert args.startswith(tc["function"]["arguments"])
        assert tc["function"]["arguments"] != args


def test_responses_api(robust_server) -> None:
    output = "ok" + section(call("search:0", {"q": "news"}))
    status, body = robust_server.post(
        "/v1/responses",
        {
            "model": "tinykimi",
            "input": "search news",
            "tools": [{"type": "function", **TOOLS[1]["function"]}],
            "max_output_tokens": 100,
            "temperature": 0,
            "vllm_xargs": {
                "puppet_script": robust_server.tokenize(output + tokens.IM_END)
            },
        },
    )
    assert status == 200, body
    calls = [item for item in body["output"] if item["type"] == "function_call"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("search", {"q": "news"})
    ]
    text = json.dumps(body["output"])
    assert not any(m in text for m in (SEC, CALL, ARG, END))


def test_dropped_calls_in_metrics(robust_server) -> None:
    _chat(robust_server, section(call("functions.rm_rf:0", {})))
    metrics = robust_server.get_text("/metrics")
    line = [
        m
        for m in metrics.splitlines()
        if m.startswith('vllm_kimi_tools:dropped_tool_calls_total{reason="undeclared')
    ]
    assert line and float(line[0].split()[-1]) >= 1


def test_request_without_tools_is_plain_chat(robust_server) -> None:
    status, body = robust_server.post(
        "/v1/chat/completions",
        {
            "model": "tinykimi",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
            "temperature": 0,
            "vllm_xargs": {
                "puppet_script": robust_server.tokenize("Hello!" + tokens.IM_END)
            },
        },
    )
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "Hello!"


def test_stock_parser_is_untouched(stock_server) -> None:
    """With the plugin installed, ``--tool-call-parser kimi_k2`` is stock vLLM:
    it still passes an undeclared tool through (the behaviour we fix only
    under our own parser name)."""
    choice = _chat(stock_server, section(call("functions.delete_file:0", {"p": 1})))
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["delete_file"]
