# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""A tool declared in a request: the one value type the parser and the
Enforcer share (pure; reads vLLM's request objects by duck typing).

Chat Completions declares a function tool as::

    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {...}, "strict": true},
    }

and the Responses API as ``{"type": "function", "name": ..., "parameters":
..., "strict": ...}``; both become ``DeclaredTool("get_weather", {...},
True)``. Other tool types (built-in tools, MCP) are not Kimi function calls
and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DeclaredTool:
    """A function tool: its name, JSON-Schema ``parameters`` and OpenAI's
    per-tool ``strict`` flag (``False``: the Enforcer keeps to the envelope)."""

    name: str
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None


def declared_tools(request: Any) -> list[DeclaredTool]:
    """The function tools of a Chat Completions or Responses request."""
    tools: list[DeclaredTool] = []
    for tool in getattr(request, "tools", None) or []:
        function = getattr(tool, "function", None)
        if function is not None:  # Chat Completions
            tools.append(
                DeclaredTool(function.name, function.parameters, function.strict)
            )
        elif getattr(tool, "type", None) == "function":  # Responses
            tools.append(
                DeclaredTool(
                    tool.name,
                    getattr(tool, "parameters", None),
                    getattr(tool, "strict", None),
                )
            )
    return tools


def named_tool_choice(request: Any) -> str | None:
    """The tool a ``tool_choice`` names (None: auto, required or none)."""
    choice = getattr(request, "tool_choice", None)
    function = getattr(choice, "function", None)  # Chat Completions
    if function is not None:
        return function.name
    if getattr(choice, "type", None) == "function":  # Responses
        return getattr(choice, "name", None)
    return None
