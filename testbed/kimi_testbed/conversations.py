# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""A messy client conversation and the same conversation written canonically."""

from __future__ import annotations

import json
from typing import Any

UUID = "3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f"

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": {
                "type": "object",
                "properties": {key: {"type": "string"}},
                "required": [key],
            },
        },
    }
    for name, key in (("search", "q"), ("open_url", "url"), ("get_weather", "city"))
]


# One canonical tool round trip: the call and its result (the next user turn
# is each test's own).
WEATHER_ROUND_TRIP: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Oslo?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "functions.get_weather:0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "cold"},
]


def _call(tool_id: str, name: str, args: Any) -> dict[str, Any]:
    return {
        "id": tool_id,
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def _parts(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


CANONICAL: list[dict[str, Any]] = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Find news and weather."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            _call("functions.search:0", "search", {"q": "news"}),
            _call("functions.open_url:1", "open_url", {"url": "https://x.test"}),
            _call("functions.get_weather:2", "get_weather", {"city": "Oslo"}),
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "functions.search:0",
        "name": "search",
        "content": "r1",
    },
    {
        "role": "tool",
        "tool_call_id": "functions.open_url:1",
        "name": "open_url",
        "content": "r2",
    },
    {
        "role": "tool",
        "tool_call_id": "functions.get_weather:2",
        "name": "get_weather",
        "content": "cold",
    },
    {"role": "user", "content": "And Rome?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            _call("functions.get_weather:3", "get_weather", {"city": "Rome"})
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "functions.get_weather:3",
        "name": "get_weather",
        "content": "warm",
    },
    {"role": "assistant", "content": "Oslo is cold, Rome is warm."},
    {"role": "user", "content": "Thanks. Anything else?"},
]

MESSY: list[dict[str, Any]] = [
    {"role": "system", "content": _parts("You are ", "helpful.")},
    {"role": "user", "content": "Find news and weather."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            _call("search:0", "search", json.dumps({"q": "news"})),
            _call("call_9f2c", "open_url", {"url": "https://x.test"}),
            _call("functions_get_weather_1", "get_weather", '{ "city" : "Oslo" }'),
        ],
    },
    {"role": "tool", "tool_call_id": "search:0", "content": _parts("r1")},
    {"role": "tool", "tool_call_id": "call_9f2c", "content": "r2"},
    {"role": "tool", "tool_call_id": "functions_get_weather_1", "content": "cold"},
    {"role": "user", "content": _parts("And Rome?")},
    {
        "role": "assistant",
        "content": _parts("Checking."),
        "tool_calls": [_call(UUID, "get_weather", {"city": "Rome"})],
    },
    # The client lost this id: matched by order (one call, one result).
    {"role": "tool", "tool_call_id": "lost-id", "content": "warm"},
    {"role": "assistant", "content": _parts("Oslo is cold, ", "Rome is warm.")},
    {"role": "user", "content": "Thanks. Anything else?"},
]


def with_string_arguments(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The OpenAI schema (and vLLM's request validation) wants string
    arguments; spell object arguments as compact JSON strings."""
    out = json.loads(json.dumps(messages))
    for message in out:
        for tc in message.get("tool_calls") or []:
            args = tc["function"]["arguments"]
            if not isinstance(args, str):
                tc["function"]["arguments"] = json.dumps(args, separators=(",", ":"))
    return out


def with_reasoning(
    messages: list[dict[str, Any]], field: str = "reasoning_content"
) -> list[dict[str, Any]]:
    """Give every assistant turn ``Thought N.`` in ``field``: clients send
    ``reasoning_content`` (Moonshot's API), vLLM 0.32 reads ``reasoning``."""
    out = [dict(m) for m in messages]
    turns = (m for m in out if m.get("role") == "assistant")
    for i, message in enumerate(turns):
        message[field] = f"Thought {i}."
    return out


# The same conversations with reasoning on every assistant turn.
MESSY_REASONING = with_reasoning(MESSY, "reasoning_content")
CANONICAL_REASONING = with_reasoning(CANONICAL, "reasoning")


def prompt_ids(server: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The prompt a running test-bed server (``VllmServer``) renders for
    ``messages`` with :data:`TOOLS`, by ``/tokenize``."""
    status, body = server.post(
        "/tokenize",
        {
            "model": "tinykimi",
            "messages": with_string_arguments(messages),
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
    )
    assert status == 200, body
    return body["tokens"]
