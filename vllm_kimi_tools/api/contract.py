# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's Chat Completions contract, where vLLM's differs (pure, no vLLM).

Kimi clients are written against Moonshot's API; its vendor verifier checks
these points. A request body is checked before vLLM reads it
(:func:`check_request`); a reply is completed after vLLM wrote it
(:func:`add_reasoning_content`)::

    {"role": "tool", "content": "..."}            -> 400, tool_call_id missing
    {"role": "system", "tools": [...]}            -> 400, dynamic tools (K3)
    "tool_choice": "auto" without "tools"         -> accepted, as "none" is
    "thinking": {"type": "disabled"}  -> "chat_template_kwargs": {"thinking": false}
    "response_format": {"json_schema": {"strict": "yes"}} -> 400
    "message": {"reasoning": "R"}   -> {"reasoning": "R", "reasoning_content": "R"}
    "delta":   {"reasoning": "R"}   -> the same, chunk by chunk

Dynamic tools (``tools`` inside a message) are a K3 feature: K2 and K2.5
prompts declare tools once, before the first message, so a tool introduced
later in the conversation cannot be rendered where it was introduced. vLLM
drops the field without a word; here it is refused, so nothing a client sent
is silently lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REASONING = "reasoning"
REASONING_CONTENT = "reasoning_content"


@dataclass(frozen=True)
class Refusal:
    """A 400 in vLLM's error shape."""

    message: str
    param: str

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": "BadRequestError",
                "param": self.param,
                "code": 400,
            }
        }


def check_request(body: dict[str, Any]) -> Refusal | None:
    """Refuse what Moonshot's API refuses; relax what it accepts (in place).

    Returns the refusal, or ``None`` with ``body`` ready for vLLM.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            if message.get("role") == "tool":
                call_id = message.get("tool_call_id")
                if not isinstance(call_id, str) or not call_id:
                    return Refusal(
                        "A tool message needs the tool_call_id of the call it answers.",
                        f"messages[{i}].tool_call_id",
                    )
            if "tools" in message:
                return Refusal(
                    "Tools declared inside a message (dynamic tools) are a "
                    "Kimi K3 feature: this model's chat format declares tools "
                    "once, before the conversation. Declare them in the "
                    "request's `tools`.",
                    f"messages[{i}].tools",
                )
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        strict = fmt["json_schema"].get("strict")
        if strict is not None and not isinstance(strict, bool):
            return Refusal(
                "response_format.json_schema.strict must be a boolean.",
                "response_format.json_schema.strict",
            )
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    kwargs = body.get("chat_template_kwargs")
    if (
        kind in ("enabled", "disabled")
        and (kwargs is None or isinstance(kwargs, dict))
        and "thinking" not in (kwargs or {})
    ):
        # Moonshot's switch, as the Kimi chat templates read it.
        body["chat_template_kwargs"] = {**(kwargs or {}), "thinking": kind == "enabled"}
    if body.get("tool_choice") == "auto" and not body.get("tools"):
        # Moonshot's API (and OpenAI's) answer in text; vLLM would refuse.
        del body["tool_choice"]
    return None


def add_reasoning_content(reply: dict[str, Any]) -> bool:
    """Give every message and delta with ``reasoning`` a ``reasoning_content``
    too (in place); whether anything was added."""
    added = False
    for choice in reply.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        for key in ("message", "delta"):
            part = choice.get(key)
            if (
                isinstance(part, dict)
                and part.get(REASONING) is not None
                and REASONING_CONTENT not in part
            ):
                part[REASONING_CONTENT] = part[REASONING]
                added = True
    return added
