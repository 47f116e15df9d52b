# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's API contract: the request checks, ``reasoning_content``, and the
ASGI middleware around a stand-in app (no vLLM)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from vllm_kimi_tools.api.contract import add_reasoning_content, check_request
from vllm_kimi_tools.api.middleware import KimiApiMiddleware
from vllm_kimi_tools.chat import hook

USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"messages": [{"role": "tool", "content": "r"}, USER]},
            "messages[0].tool_call_id",
        ),
        (
            {"messages": [{"role": "tool", "content": "r", "tool_call_id": ""}]},
            "messages[0].tool_call_id",
        ),
        (
            {"messages": [USER, {"role": "system", "content": "", "tools": []}]},
            "messages[1].tools",
        ),
        (
            {
                "messages": [USER],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "strict": "yes", "schema": {}},
                },
            },
            "response_format.json_schema.strict",
        ),
    ],
)
def test_refused_requests(body: dict[str, Any], param: str) -> None:
    refusal = check_request(body)
    assert refusal is not None and refusal.param == param
    assert refusal.body()["error"]["code"] == 400


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [USER]},
        {
            "messages": [
                {"role": "tool", "content": "r", "tool_call_id": "functions.f:0"}
            ]
        },
        {
            "messages": [USER],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "strict": True, "schema": {}},
            },
        },
        {"messages": [USER], "tools": [{"type": "function"}], "tool_choice": "auto"},
    ],
)
def test_accepted_requests_are_unchanged(body: dict[str, Any]) -> None:
    before = json.dumps(body)
    assert check_request(body) is None
    assert json.dumps(body) == before


def test_tool_choice_auto_without_tools_is_dropped() -> None:
    body = {"messages": [USER], "tool_choice": "auto"}
    assert check_request(body) is None
    assert "tool_choice" not in body
    kept = {"messages": [USER], "tool_choice": "required"}
    assert check_request(kept) is None and kept["tool_choice"] == "required"


@pytest.mark.parametrize(
    ("thinking", "kwargs", "want"),
    [
        ({"type": "disabled"}, None, {"thinking": False}),
        ({"type": "enabled"}, {"x": 1}, {"x": 1, "thinking": True}),
        ({"type": "disabled"}, {"thinking": True}, {"thinking": True}),
        ({"type": "auto"}, None, None),
        ("off", None, None),
    ],
)
def test_moonshots_thinking_switch(thinking, kwargs, want) -> None:
    body: dict[str, Any] = {"messages": [USER], "thinking": thinking}
    if kwargs is not None:
        body["chat_template_kwargs"] = kwargs
    assert check_request(body) is None
    assert body.get("chat_template_kwargs") == want


def test_reasoning_content_beside_reasoning() -> None:
    reply = {
        "choices": [
            {"message": {"role": "assistant", "reasoning": "R", "content": "C"}},
            {"delta": {"reasoning": None, "content": "x"}},
            {"delta": {"reasoning": "r2"}},
        ]
    }
    assert add_reasoning_content(reply)
    assert reply["choices"][0]["message"]["reasoning_content"] == "R"
    assert "reasoning_content" not in reply["choices"][1]["delta"]
    assert reply["choices"][2]["delta"]["reasoning_content"] == "r2"
    assert not add_reasoning_content({"choices": [{"message": {"content": "C"}}]})


# -- the middleware ----------------------------------------------------------


def _app(reply: list[tuple[bytes, bytes]]):
    """An ASGI app that records the body it got and answers ``reply``:
    (content type, body) chunks."""
    seen: dict[str, Any] = {}

    async def app(scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen["body"] = json.loads(body)
        seen["headers"] = dict(scope["headers"])
        ctype = reply[0][0]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", ctype), (b"content-length", b"999")],
            }
        )
        for i, (_, chunk) in enumerate(reply):
            more = i < len(reply) - 1
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app, seen


def _call(app, body: dict[str, Any]) -> tuple[int, dict, bytes]:
    raw = json.dumps(body).encode()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-length", str(len(raw)).encode())],
    }
    asyncio.run(KimiApiMiddleware(app)(scope, receive, send))
    start = sent[0]
    body_out = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body_out


@pytest.fixture
def served(monkeypatch):
    monkeypatch.setattr(hook, "_served", True)


def test_middleware_refuses_before_vllm(served) -> None:
    app, seen = _app([(b"application/json", b"{}")])
    status, _, body = _call(app, {"messages": [{"role": "tool", "content": "r"}]})
    assert status == 400 and "body" not in seen
    assert json.loads(body)["error"]["param"] == "messages[0].tool_call_id"


def test_middleware_passes_the_relaxed_body_and_adds_reasoning_content(served):
    reply = json.dumps({"choices": [{"message": {"reasoning": "R"}}]}).encode()
    app, seen = _app([(b"application/json", reply[:10]), (b"", reply[10:])])
    status, headers, body = _call(app, {"messages": [USER], "tool_choice": "auto"})
    assert status == 200 and "tool_choice" not in seen["body"]
    assert int(seen["headers"][b"content-length"]) == len(json.dumps(seen["body"]))
    out = json.loads(body)
    assert out["choices"][0]["message"]["reasoning_content"] == "R"
    assert int(headers[b"content-length"]) == len(body)


def test_middleware_rewrites_events_split_anywhere(served) -> None:
    events = [
        {"choices": [{"delta": {"reasoning": "a\\nb"}}]},
        {"choices": [{"delta": {"content": "c"}}]},
    ]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    stream += b"data: [DONE]\n\n"
    pieces = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    app, _ = _app([(b"text/event-stream", p) for p in pieces])
    _, _, body = _call(app, {"messages": [USER]})
    lines = [line for line in body.split(b"\n") if line]
    got = [json.loads(line[5:]) for line in lines[:-1]]
    assert got[0]["choices"][0]["delta"]["reasoning_content"] == "a\\nb"
    assert got[1] == events[1] and lines[-1] == b"data: [DONE]"
    assert body.count(b"\n\n") == 3


def test_middleware_changes_nothing_where_the_plugin_does_not_serve(monkeypatch):
    monkeypatch.setattr(hook, "_served", False)
    reply = json.dumps({"choices": [{"message": {"reasoning": "R"}}]}).encode()
    app, seen = _app([(b"application/json", reply)])
    status, _, body = _call(app, {"messages": [{"role": "tool", "content": "r"}]})
    assert status == 200 and body == reply
    assert seen["body"] == {"messages": [{"role": "tool", "content": "r"}]}
