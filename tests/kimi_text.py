# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Helpers that write Kimi K2 model output for tests."""

from __future__ import annotations

import json
from typing import Any

from vllm_kimi_tools import tokens
from vllm_kimi_tools.parsing import ToolSpec

ARG = tokens.TOOL_CALL_ARGUMENT_BEGIN
CALL = tokens.TOOL_CALL_BEGIN
END = tokens.TOOL_CALL_END
SEC = tokens.TOOL_CALLS_SECTION_BEGIN
SEC_END = tokens.TOOL_CALLS_SECTION_END

__all__ = [
    "ARG",
    "CALL",
    "END",
    "SEC",
    "SEC_END",
    "TOOLS",
    "WEATHER_TOOL",
    "call",
    "openai_tool",
    "section",
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
    ToolSpec("get_weather", WEATHER_SCHEMA),
    ToolSpec("search", SEARCH_SCHEMA),
    ToolSpec(
        "mcp:fs.read-file",
        {"type": "object", "properties": {"p": {"type": "integer"}}, "required": ["p"]},
    ),
)


def openai_tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions ``tools`` entry."""
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


WEATHER_TOOL = openai_tool("get_weather", WEATHER_SCHEMA)


def call(tool_id: str, args: Any) -> str:
    text = args if isinstance(args, str) else json.dumps(args)
    return f"{CALL}{tool_id}{ARG}{text}{END}"


def section(*calls: str) -> str:
    return SEC + "".join(calls) + SEC_END
