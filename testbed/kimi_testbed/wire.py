# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The one writer of Kimi K2 model output for the tests, scenarios and
benchmarks::

    section(call("get_weather", {"city": "Oslo"}, idx=0))
    == "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
       '<|tool_call_argument_begin|>{"city": "Oslo"}<|tool_call_end|>'
       "<|tool_calls_section_end|>"

and of the ``tools`` entries a request declares.
"""

from __future__ import annotations

import json
from typing import Any

from vllm_kimi_tools import tokens
from vllm_kimi_tools.parser.tool_ids import make_tool_call_id

ARG = tokens.TOOL_CALL_ARGUMENT_BEGIN
CALL = tokens.TOOL_CALL_BEGIN
END = tokens.TOOL_CALL_END
SEC = tokens.TOOL_CALLS_SECTION_BEGIN
SEC_END = tokens.TOOL_CALLS_SECTION_END


def call(name_or_id: str, arguments: Any, idx: int | None = None) -> str:
    """One call. ``idx`` given: the id is ``functions.NAME:IDX``, else
    ``name_or_id`` is written as the id, as is. ``arguments``: text as is,
    anything else as JSON."""
    call_id = name_or_id if idx is None else make_tool_call_id(name_or_id, idx)
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f"{CALL}{call_id}{ARG}{text}{END}"


def section(*calls: str) -> str:
    """A tool-call section holding ``calls``."""
    return SEC + "".join(calls) + SEC_END


def openai_tool(
    name: str, parameters: dict[str, Any], description: str | None = None
) -> dict[str, Any]:
    """A Chat Completions ``tools`` entry."""
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    function["parameters"] = parameters
    return {"type": "function", "function": function}
