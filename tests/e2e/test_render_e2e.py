# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The chat-template hook inside a real ``vllm serve``, seen via /tokenize."""

from __future__ import annotations

import json

import pytest

from kimi_testbed.conversations import (
    CANONICAL,
    MESSY,
    TOOLS,
    prompt_ids,
    with_string_arguments,
)
from kimi_testbed.server import VllmServer
from tests.kimi_text import call, section
from vllm_kimi_tools import tokens

pytestmark = pytest.mark.e2e


def test_engine_receives_canonical_prompt(robust_server) -> None:
    messy = prompt_ids(robust_server, MESSY)
    assert messy == prompt_ids(robust_server, CANONICAL)
    generation = robust_server.tokenize(tokens.GENERATION_PROMPT)
    assert messy[-len(generation) :] == generation
    status, text = robust_server.post(
        "/detokenize", {"model": "tinykimi", "tokens": messy}
    )
    assert status == 200
    prompt = text["prompt"]
    assert "call_9f2c" not in prompt and "[{'type'" not in prompt
    assert "## Return of functions.get_weather:3" in prompt


def test_output_ids_continue_normalised_history(robust_server) -> None:
    output = section(call("get_weather:0", {"city": "Paris"})) + tokens.IM_END
    status, body = robust_server.post(
        "/v1/chat/completions",
        {
            "model": "tinykimi",
            "messages": with_string_arguments(MESSY),
            "tools": TOOLS,
            "max_tokens": 64,
            "temperature": 0,
            "vllm_xargs": {"puppet_script": robust_server.tokenize(output)},
        },
    )
    assert status == 200, body
    (tc,) = body["choices"][0]["message"]["tool_calls"]
    assert tc["id"] == "functions.get_weather:4"
    assert json.loads(tc["function"]["arguments"]) == {"city": "Paris"}


def test_stock_parser_server_renders_unchanged(stock_server) -> None:
    assert prompt_ids(stock_server, MESSY) != prompt_ids(stock_server, CANONICAL)


def _detokenize(server: VllmServer, ids: list[int]) -> str:
    status, body = server.post("/detokenize", {"model": "tinykimi", "tokens": ids})
    assert status == 200, body
    return body["prompt"]


def test_responses_history_is_normalised(robust_server) -> None:
    body = {
        "model": "tinykimi",
        "input": [
            {"role": "user", "content": "search x"},
            {
                "type": "function_call",
                "call_id": "call_abc",
                "name": "search",
                "arguments": '{"q": "x"}',
            },
            {"type": "function_call_output", "call_id": "call_abc", "output": "res"},
        ],
        "tools": [{"type": "function", **TOOLS[0]["function"]}],
    }
    status, rendered = robust_server.post("/v1/responses/render", body)
    assert status == 200, rendered
    prompt = _detokenize(robust_server, rendered["token_ids"])
    assert "<|tool_call_begin|>functions.search:0<|tool_call_argument_begin|>" in prompt
    assert "## Return of functions.search:0" in prompt
    assert "call_abc" not in prompt
    assert prompt.endswith(tokens.GENERATION_PROMPT)


def test_chat_render_endpoint_matches_tokenize(robust_server) -> None:
    status, rendered = robust_server.post(
        "/v1/chat/completions/render",
        {
            "model": "tinykimi",
            "messages": with_string_arguments(MESSY),
            "tools": TOOLS,
        },
    )
    assert status == 200, rendered
    assert rendered["token_ids"] == prompt_ids(robust_server, CANONICAL)
