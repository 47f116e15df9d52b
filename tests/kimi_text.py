# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Declared tools shared by the parser tests; the Kimi output they parse is
written by :mod:`kimi_testbed.wire` (re-exported here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kimi_testbed.wire import ARG, CALL, END, SEC, SEC_END, call, openai_tool, section
from vllm_kimi_tools import tokens
from vllm_kimi_tools.tools import DeclaredTool

__all__ = [
    "ARG",
    "K25_SWITCHES",
    "CALL",
    "END",
    "SEC",
    "SEC_END",
    "TOOLS",
    "WEATHER_TOOL",
    "call",
    "openai_tool",
    "section",
    "token_deltas",
]

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"queries": {"type": "array", "items": {"type": "string"}}},
    "required": ["queries"],
    "additionalProperties": False,
}
TOOLS = (
    DeclaredTool("get_weather", WEATHER_SCHEMA),
    DeclaredTool("search", SEARCH_SCHEMA),
    DeclaredTool(
        "mcp:fs.read-file",
        {"type": "object", "properties": {"p": {"type": "integer"}}, "required": ["p"]},
    ),
)


WEATHER_TOOL = openai_tool("get_weather", WEATHER_SCHEMA)


# Each K2.5 thinking switch (``chat_template_kwargs``) and the generation
# prompt the template then ends with.
K25_SWITCHES = pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, tokens.GENERATION_PROMPT_THINKING),
        ({"thinking": False}, tokens.GENERATION_PROMPT_NO_THINKING),
        ({"preserve_thinking": True}, tokens.GENERATION_PROMPT_THINKING),
    ],
    ids=["thinking", "off", "preserve"],
)


def token_deltas(
    parser: Any,
    tokenizer: Any,
    request: Any,
    text: str,
    prompt_token_ids: list[int] | None = None,
) -> Iterator[Any]:
    """Stream ``text`` into a vLLM parser one token at a time, as the serving
    layer does (each token's text and id); the deltas it returns."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    for i, token in enumerate(ids):
        delta = parser.parse_delta(
            tokenizer.decode([token]),
            [token],
            request,
            prompt_token_ids=prompt_token_ids,
            finished=i == len(ids) - 1,
        )
        if delta is not None:
            yield delta
