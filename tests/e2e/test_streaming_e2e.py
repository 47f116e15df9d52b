# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Tool-call arguments streamed as the model writes them, through a real
``vllm serve`` (CPU): Chat Completions and Responses, the Enforcer on and
off, a call cut by ``max_tokens``.

The puppet (``intend`` mode) writes a long call to a declared tool; the
Enforcer constrains it exactly, so its arguments stream piece by piece. What
the client joins must be the non-streaming arguments, byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kimi_testbed.k2vv import accumulate_stream
from kimi_testbed.responses_api import accumulate_events
from kimi_testbed.scenarios import CLOSERS, call
from kimi_testbed.server import VllmServer
from tests.kimi_text import openai_tool, section
from vllm_kimi_tools import tokens

pytestmark = pytest.mark.e2e

WRITE = openai_tool(
    "write_file",
    {
        "type": "object",
        "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
        "required": ["path", "text"],
        "additionalProperties": False,
    },
)
ARGS = json.dumps({"path": "notes.txt", "text": "line of notes " * 40})
OUTPUT = "Writing it." + section(call("write_file", ARGS, 0))


def _body(server: VllmServer, xargs: dict[str, Any] | None = None, **kw: Any):
    closers = [server.tokenize(t)[0] for t in CLOSERS]
    return {
        "model": "tinykimi",
        "messages": [{"role": "user", "content": "Save my notes."}],
        "tools": [WRITE],
        "max_tokens": 400,
        "temperature": 0,
        "vllm_xargs": {
            "puppet_script": server.tokenize(OUTPUT + tokens.IM_END),
            "puppet_mode": "intend",
            "puppet_closers": closers,
            **(xargs or {}),
        },
        **kw,
    }


def _pieces(events: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(event number, tool-call piece) for every piece a client received."""
    return [
        (n, piece)
        for n, event in enumerate(events)
        for choice in event.get("choices") or []
        for piece in (choice.get("delta") or {}).get("tool_calls") or []
    ]


def _finishes(events: list[dict[str, Any]]) -> list[str]:
    return [
        c["finish_reason"]
        for e in events
        for c in e.get("choices") or []
        if c.get("finish_reason") is not None
    ]


def test_chat_arguments_stream_as_written(robust_server) -> None:
    events = robust_server.stream("/v1/chat/completions", _body(robust_server))
    pieces = _pieces(events)
    head, *rest = pieces
    assert (head[1]["id"], head[1]["function"]["name"]) == (
        "functions.write_file:0",
        "write_file",
    )
    assert all(p.get("id") is None and p["index"] == 0 for _, p in rest)
    assert all(not (p.get("function") or {}).get("name") for _, p in rest)
    args = [p["function"].get("arguments") or "" for _, p in pieces]
    assert len([a for a in args if a]) >= 20  # many pieces, not one
    # The first argument byte comes right after the header, not at the end.
    first_arg = next(n for (n, _), a in zip(pieces, args) if a)
    assert first_arg - head[0] <= 3
    assert pieces[-1][0] - first_arg >= 20
    assert _finishes(events) == ["tool_calls"]  # exactly one per choice
    status, whole = robust_server.post("/v1/chat/completions", _body(robust_server))
    assert status == 200, whole
    (returned,) = whole["choices"][0]["message"]["tool_calls"]
    assert "".join(args) == returned["function"]["arguments"] == ARGS
    message, _ = accumulate_stream(events)
    assert message["content"] == whole["choices"][0]["message"]["content"]


def test_responses_arguments_stream_as_written(robust_server) -> None:
    chat = _body(robust_server)
    body = {
        "model": "tinykimi",
        "input": chat["messages"][0]["content"],
        "tools": [{"type": "function", **WRITE["function"]}],
        "max_output_tokens": 400,
        "temperature": 0,
        "vllm_xargs": chat["vllm_xargs"],
    }
    events = robust_server.stream("/v1/responses", body)
    deltas = [
        e["delta"]
        for e in events
        if e.get("type") == "response.function_call_arguments.delta"
    ]
    assert len(deltas) >= 20
    message, finish = accumulate_events(events)
    (streamed,) = message["tool_calls"]
    assert streamed["function"]["arguments"] == "".join(deltas) == ARGS
    status, whole = robust_server.post("/v1/responses", body)
    assert status == 200, whole
    (item,) = [i for i in whole["output"] if i["type"] == "function_call"]
    assert item["arguments"] == ARGS


def test_without_the_enforcer_a_call_is_sent_whole(robust_server) -> None:
    body = _body(robust_server, {"kimi_tools_enforce": False})
    events = robust_server.stream("/v1/chat/completions", body)
    pieces = [p for _, p in _pieces(events)]
    assert [(p["id"], p["function"]["arguments"]) for p in pieces] == [
        ("functions.write_file:0", ARGS)
    ]
    assert _finishes(events) == ["tool_calls"]


def test_call_cut_by_max_tokens(robust_server) -> None:
    """Streamed: the header and the arguments written so far went out, then
    ``length`` (the client must not run the call). Not streamed: no call,
    ``length``. One finish reason either way."""
    body = _body(robust_server, max_tokens=40)
    events = robust_server.stream("/v1/chat/completions", body)
    assert _finishes(events) == ["length"]
    message, _ = accumulate_stream(events)
    (partial,) = message["tool_calls"]
    assert partial["id"] == "functions.write_file:0"
    sent = partial["function"]["arguments"]
    assert sent and ARGS.startswith(sent) and sent != ARGS
    status, whole = robust_server.post("/v1/chat/completions", body)
    assert status == 200, whole
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "length"
    assert not choice["message"].get("tool_calls")
    assert choice["message"]["content"] == message["content"] == "Writing it."
