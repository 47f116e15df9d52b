# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The same request through the Responses API, and its reply as a chat message.

The test bed writes every scenario as a Chat Completions body; this turns it
into the equivalent ``/v1/responses`` body::

    {"messages": [...], "tools": [{"type": "function", "function": {...}}],
     "max_tokens": 64}
    ->
    {"input": [{"role": "user", ...}, {"type": "function_call", ...},
               {"type": "function_call_output", ...}],
     "tools": [{"type": "function", "name": ..., "parameters": ...}],
     "max_output_tokens": 64}

and a Responses reply (whole, or its stream of events) back into the chat
``message`` shape the K2VV checks read (``content``, ``reasoning``,
``tool_calls``) with a chat-style finish reason. Pure: no vLLM.
"""

from __future__ import annotations

from typing import Any

# Chat body keys that carry over unchanged.
_SAME = ("model", "temperature", "vllm_xargs", "chat_template_kwargs", "stream")


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content)


def responses_body(chat: dict[str, Any]) -> dict[str, Any]:
    """The ``/v1/responses`` body equivalent to a Chat Completions body."""
    items: list[dict[str, Any]] = []
    for i, message in enumerate(chat["messages"]):
        role = message.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.get("tool_call_id") or f"unknown_{i}",
                    "output": _text(message.get("content")),
                }
            )
            continue
        text = _text(message.get("content"))
        if text or role != "assistant":
            items.append({"role": role, "content": text})
        for call in message.get("tool_calls") or []:
            items.append(
                {
                    "type": "function_call",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
            )
    body: dict[str, Any] = {k: chat[k] for k in _SAME if k in chat}
    body["input"] = items
    body["tools"] = [
        {"type": "function", **t["function"]} for t in chat.get("tools") or []
    ]
    if "max_tokens" in chat:
        body["max_output_tokens"] = chat["max_tokens"]
    choice = chat.get("tool_choice")
    if isinstance(choice, dict):
        body["tool_choice"] = {"type": "function", "name": choice["function"]["name"]}
    elif choice is not None:
        body["tool_choice"] = choice
    return body


def _finish(status: str | None, calls: list[Any], reason: Any) -> str:
    if status == "incomplete":
        return "length" if (reason or {}).get("reason") != "content_filter" else reason
    return "tool_calls" if calls else "stop"


def _call(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item.get("call_id"),
        "type": "function",
        "function": {"name": item.get("name"), "arguments": item.get("arguments")},
    }


def chat_message(response: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A whole Responses reply as ``(chat message, finish_reason)``."""
    content, reasoning, calls = [], [], []
    for item in response.get("output") or []:
        kind = item.get("type")
        if kind == "message":
            content.extend(p.get("text", "") for p in item.get("content") or [])
        elif kind == "reasoning":
            reasoning.extend(p.get("text", "") for p in item.get("content") or [])
        elif kind == "function_call":
            calls.append(_call(item))
    message = {
        "role": "assistant",
        "content": "".join(content) or None,
        "reasoning": "".join(reasoning) or None,
        "tool_calls": calls,
    }
    finish = _finish(response.get("status"), calls, response.get("incomplete_details"))
    return message, finish


def accumulate_events(events: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """A streamed Responses reply as ``(chat message, finish_reason)``, from
    what a client receives: text and argument deltas appended, calls opened
    by ``response.output_item.added``."""
    content, reasoning = [], []
    calls: dict[int, dict[str, Any]] = {}
    final: dict[str, Any] = {}
    for event in events:
        kind = event.get("type")
        if kind == "response.output_text.delta":
            content.append(event.get("delta") or "")
        elif kind == "response.reasoning_text.delta":
            reasoning.append(event.get("delta") or "")
        elif kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                call = _call(item)
                call["function"]["arguments"] = ""
                calls[event.get("output_index", len(calls))] = call
        elif kind == "response.function_call_arguments.delta":
            slot = calls.get(event.get("output_index"))
            if slot is not None:
                slot["function"]["arguments"] += event.get("delta") or ""
        elif kind in ("response.completed", "response.incomplete"):
            final = event.get("response") or {}
    ordered = [calls[i] for i in sorted(calls)]
    message = {
        "role": "assistant",
        "content": "".join(content) or None,
        "reasoning": "".join(reasoning) or None,
        "tool_calls": ordered,
    }
    finish = _finish(final.get("status"), ordered, final.get("incomplete_details"))
    return message, finish
