# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer through a real ``vllm serve`` (CPU).

The puppet (``intend`` mode) tries to write a bad call; the Enforcer (on by
default for ``kimi_k2_robust``) must steer it into a call K2VV accepts. The
same intentions on the stock ``kimi_k2`` server show the failures it fixes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kimi_testbed.k2vv import check_message
from kimi_testbed.scenarios import CLOSERS, call
from kimi_testbed.server import VllmServer
from tests.kimi_text import openai_tool, section
from vllm_kimi_tools import tokens
from vllm_kimi_tools.metrics import ENFORCED_REQUESTS_TOTAL as ENFORCED_REQUESTS

pytestmark = pytest.mark.e2e

WEATHER = openai_tool(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "unit": {"enum": ["c", "f"]},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    },
)
TOOLS = [
    WEATHER,
    openai_tool(
        "search",
        {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    ),
]


# name -> what the model intends to write
INTENTIONS = {
    "undeclared tool": section(call("get_time", '{"tz": "UTC"}', 0)),
    "wrong types": section(call("get_weather", '{"city": "Oslo", "days": "three"}', 0)),
    "missing required key": section(call("get_weather", '{"city": "Oslo"}', 0)),
    "extra key": section(
        call("get_weather", '{"city": "Oslo", "days": 2, "lang": "en"}', 0)
    ),
    "marker inside a string": section(
        call("get_weather", f'{{"city": "Os{tokens.TOOL_CALL_END}lo", "days": 2}}', 0)
    ),
    "string too long": section(
        call("get_weather", '{"city": "Llanfairpwllgwyngyll", "days": 2}', 0)
    ),
    "out of range": section(call("get_weather", '{"city": "Oslo", "days": 40}', 0)),
    "non-canonical id": section(call("search:2", '{"q": "news"}')),
    "string-encoded arguments": section(call("search", '"{\\"q\\": \\"news\\"}"', 0)),
}
CORRECT = "Checking." + section(
    call("get_weather", '{"city": "Oslo", "days": 2, "unit": "c"}', 0),
    call("search", '{"q": "Oslo news"}', 1),
)


def _ask(
    server: VllmServer, output: str, xargs: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """The model intends ``output``; ``xargs`` adds to ``vllm_xargs``."""
    closers = [server.tokenize(t)[0] for t in CLOSERS]
    body = {
        "model": "tinykimi",
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": TOOLS,
        "max_tokens": 120,
        "temperature": 0,
        "vllm_xargs": {
            "puppet_script": server.tokenize(output + tokens.IM_END),
            "puppet_mode": "intend",
            "puppet_closers": closers,
            **(xargs or {}),
        },
        **kw,
    }
    status, reply = server.post("/v1/chat/completions", body)
    assert status == 200, reply
    return reply["choices"][0]


@pytest.mark.parametrize("intention", sorted(INTENTIONS))
def test_enforcer_turns_bad_intentions_into_valid_calls(robust_server, intention):
    choice = _ask(robust_server, INTENTIONS[intention])
    verdict = check_message(choice["message"], choice["finish_reason"], TOOLS)
    assert choice["finish_reason"] == "tool_calls", choice
    assert verdict.ok, (verdict, choice["message"])


def test_correct_calls_pass_unaltered(robust_server):
    choice = _ask(robust_server, CORRECT)
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls
    ] == [
        (
            "functions.get_weather:0",
            "get_weather",
            '{"city": "Oslo", "days": 2, "unit": "c"}',
        ),
        ("functions.search:1", "search", '{"q": "Oslo news"}'),
    ]
    assert choice["message"]["content"] == "Checking."


def test_enforcer_can_be_turned_off_per_request(robust_server):
    choice = _ask(
        robust_server, INTENTIONS["wrong types"], xargs={"kimi_tools_enforce": "off"}
    )
    # Unconstrained, the model writes its schema-invalid call as intended.
    calls = choice["message"]["tool_calls"]
    assert calls and '"three"' in calls[0]["function"]["arguments"]


def test_response_format_with_tools(robust_server):
    """vLLM's response_format grammar and the Enforcer on one request: the
    answer follows response_format; nothing breaks."""
    choice = _ask(
        robust_server,
        '{"answer": 1}',
        response_format={"type": "json_object"},
    )
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == '{"answer": 1}'


ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"sky": {"enum": ["clear", "cloudy"]}},
            "required": ["sky"],
        },
    },
}
OSLO = section(call("get_weather", '{"city": "Oslo", "days": 2}', 0))


def test_response_format_beside_tools_shapes_a_text_reply(robust_server):
    """No call: the text is the response_format's JSON, enforced."""
    choice = _ask(robust_server, "It is sunny.", response_format=ANSWER)
    assert choice["finish_reason"] == "stop", choice
    assert not choice["message"].get("tool_calls")
    assert json.loads(choice["message"]["content"])["sky"] in ("clear", "cloudy")


@pytest.mark.parametrize("server", ["robust_server", "stock_server"])
def test_response_format_beside_tools_keeps_the_calls(request, server):
    """A call instead of the JSON: kept (and enforced) by kimi_k2_robust;
    stock vLLM's JSON grammar leaves the model no way to call."""
    choice = _ask(request.getfixturevalue(server), OSLO, response_format=ANSWER)
    calls = choice["message"].get("tool_calls") or []
    if server == "stock_server":
        assert not calls and json.loads(choice["message"]["content"]), choice
        return
    assert choice["finish_reason"] == "tool_calls", choice
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Oslo", "days": 2}
    ]


def test_unusable_schema_is_a_400(robust_server):
    status, reply = robust_server.post(
        "/v1/chat/completions",
        {
            "model": "tinykimi",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [openai_tool("f", {"type": "string"})],
        },
    )
    assert status == 400
    assert "must describe a JSON object" in reply["error"]["message"]


def test_enforcer_reports_what_it_did(robust_server):
    """The engine process logs its tallies, and its counters reach the API
    server's /metrics (the engine core runs in a process of its own)."""
    import re
    import time

    def requests_counted() -> float:
        name = re.escape(ENFORCED_REQUESTS)
        found = re.search(
            name + r'\{engine="0"\} ([0-9.]+)', robust_server.get_text("/metrics")
        )
        return float(found.group(1)) if found else 0.0

    before = requests_counted()
    _ask(robust_server, INTENTIONS["wrong types"])
    time.sleep(1.1)
    _ask(robust_server, CORRECT)
    assert requests_counted() == before + 2
    lines = re.findall(
        r"Kimi tool Enforcer: (\d+) requests, (\d+) blocked steps, (\d+) grammars",
        robust_server.log_path.read_text(errors="replace"),
    )
    assert lines, robust_server.log_tail()
    requests, blocked, grammars = map(int, lines[-1])
    assert requests >= 2 and blocked >= 1 and grammars >= 1


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the baseline: stock kimi_k2 with default flags constrains nothing",
)
@pytest.mark.parametrize("intention", ["undeclared tool", "wrong types", "extra key"])
def test_stock_parser_keeps_calls_valid(stock_server, intention):
    choice = _ask(stock_server, INTENTIONS[intention])
    verdict = check_message(choice["message"], choice["finish_reason"], TOOLS)
    assert verdict.ok, choice


def test_vocabulary_tables_only_where_the_parser_is_served(robust_server, stock_server):
    """The Enforcer's tables (seconds of CPU per engine process) are built on
    the kimi_k2_robust server at start-up, and never on a stock kimi_k2 one
    with this package installed."""
    tool = openai_tool("get_weather", {"type": "object"})
    body = {
        "model": "tinykimi",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [tool],
        "max_tokens": 4,
    }
    for server in (robust_server, stock_server):
        status, _ = server.post("/v1/chat/completions", body)
        assert status == 200
    built = "Kimi tool Enforcer: vocabulary tables built"
    assert built in robust_server.log_path.read_text(errors="replace")
    assert built not in stock_server.log_path.read_text(errors="replace")
