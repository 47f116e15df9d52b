# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""K2-Vendor-Verifier's per-response checks, plus ours (pure).

K2VV (``tool_calls_eval.py``) validates a response only when its
``finish_reason`` is ``tool_calls``: every call must name a tool declared in
the request, with arguments that parse as JSON and pass ``jsonschema`` (no
format checker) against that tool's ``parameters``; an empty
``parameters`` (``{}``) never passes. ``schema_accuracy`` = successful
responses / responses with ``finish_reason == "tool_calls"``.

Ours, on top: ids canonical (``functions.NAME:IDX``) and unique, no Kimi
markup (tool and chat markers, ``<think>``/``</think>``) in ``content`` or
``reasoning``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import regex

from vllm_kimi_tools.tokens import (
    CHAT_CONTROL_TOKENS,
    REQUIRED_TOOL_TOKENS,
    THINK_BEGIN,
    THINK_END,
)

CANONICAL_ID = regex.compile(r"functions\.(?P<name>.+):(?P<idx>\d+)")
MARKUP = (*REQUIRED_TOOL_TOKENS, *CHAT_CONTROL_TOKENS, THINK_BEGIN, THINK_END)
# How each of our problems starts (K2VV's own start with the tool name).
ID_PROBLEMS = ("duplicate ids", "non-canonical id")
MARKUP_PROBLEM = "markup "


@dataclass
class Verdict:
    finish_reason: str | None
    k2vv_valid: bool | None  # None: not a tool_calls response
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.k2vv_valid is not False and not self.problems


def validate_tool_call(call: dict[str, Any], tools: list[dict[str, Any]]) -> str | None:
    """K2VV's ``validate_tool_call``: None if valid, else why not."""
    function = call.get("function") or {}
    name = function.get("name")
    schema = next(
        (
            t["function"].get("parameters")
            for t in tools
            if t.get("function", {}).get("name") == name
        ),
        None,
    )
    if not schema:
        return (
            f"undeclared tool {name!r}" if schema is None else f"{name}: empty schema"
        )
    try:
        args = json.loads(function.get("arguments") or "")
    except ValueError as e:
        return f"{name}: arguments are not JSON ({e})"
    try:
        jsonschema.validate(instance=args, schema=schema)
    except jsonschema.ValidationError as e:
        return f"{name}: schema error: {e.message}"
    except jsonschema.SchemaError as e:
        return f"{name}: invalid tool schema: {e.message}"
    return None


def check_message(
    message: dict[str, Any],
    finish_reason: str | None,
    tools: list[dict[str, Any]],
    first_index: int = 0,
) -> Verdict:
    """Score one chat completion ``message`` like K2VV, plus our checks."""
    calls = message.get("tool_calls") or []
    verdict = Verdict(finish_reason, None)
    if finish_reason == "tool_calls":
        errors = [e for c in calls if (e := validate_tool_call(c, tools))]
        verdict.k2vv_valid = bool(calls) and not errors
        verdict.problems.extend(errors if calls else ["tool_calls without calls"])
    ids = [c.get("id") for c in calls]
    if len(set(ids)) != len(ids):
        verdict.problems.append(f"{ID_PROBLEMS[0]} {ids}")
    for i, (call, call_id) in enumerate(zip(calls, ids)):
        match = CANONICAL_ID.fullmatch(call_id or "")
        name = (call.get("function") or {}).get("name")
        if not match or match["name"] != name or int(match["idx"]) != first_index + i:
            verdict.problems.append(f"{ID_PROBLEMS[1]} {call_id!r} for {name!r}")
    texts = (message.get(k) for k in ("content", "reasoning", "reasoning_content"))
    for text in texts:
        for marker in MARKUP:
            if text and marker in text:
                verdict.problems.append(
                    f"{MARKUP_PROBLEM}{marker} leaked into the text"
                )
    return verdict


def accumulate_stream(events: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    """A streamed reply as one message, the way K2VV accumulates it: text
    concatenated, tool calls keyed by ``index`` (id and name kept, argument
    pieces appended), the last non-null ``finish_reason``.

    Returns ``(message, finish_reason)``.
    """
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish_reason = None
    for event in events:
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(
                delta.get("reasoning") or delta.get("reasoning_content") or ""
            )
            for piece in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    piece.get("index", len(calls)),
                    {
                        "id": None,
                        "type": "function",
                        "function": {"name": None, "arguments": ""},
                    },
                )
                if piece.get("id"):
                    slot["id"] = piece["id"]
                function = piece.get("function") or {}
                if function.get("name"):
                    slot["function"]["name"] = function["name"]
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                finish_reason = choice["finish_reason"]
    message = {
        "role": "assistant",
        "content": "".join(content) or None,
        "reasoning": "".join(reasoning) or None,
        "tool_calls": [calls[i] for i in sorted(calls)],
    }
    return message, finish_reason
