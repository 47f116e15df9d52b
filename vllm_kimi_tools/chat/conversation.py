# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Rewrite a chat conversation the way Moonshot's API does before rendering.

Kimi K2's template prints history tool-call ids verbatim, and the model
imitates what it sees. A client's history such as::

    assistant  tool_calls=[{"id": "search:0", ...}, {"id": "call_9f2c", ...}]
    tool       tool_call_id="search:0"            (no name)
    tool       tool_call_id="call_9f2c"

is rendered as if it had been written canonically::

    assistant  tool_calls=[{"id": "functions.search:0"}, {"id": "functions.open:1"}]
    tool       tool_call_id="functions.search:0", name="search"
    tool       tool_call_id="functions.open:1",   name="open"

IDX is the running index of tool calls in the conversation. Content that is
``None``, ``""`` or a list of text parts becomes a plain string on every role;
object arguments become JSON text (vLLM parses both spellings into the same
object before the template runs, so they render identically);
``reasoning_content`` is carried into vLLM's ``reasoning`` field. No vLLM
import; the input is left unchanged except that one-shot iterables in it are
replaced by equal lists.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm_kimi_tools.parser.tool_ids import make_tool_call_id, resolve_tool_call_id


@dataclass(slots=True)
class NormalizationReport:
    """What was changed, for logs and for the ``render`` CLI."""

    # Tool calls in the conversation (the next canonical index).
    tool_call_count: int = 0
    id_map: dict[str, str] = field(default_factory=dict)
    matched_by_order: list[str] = field(default_factory=list)
    orphan_results: list[str] = field(default_factory=list)
    names_added: int = 0
    contents_flattened: int = 0


def _text_only(parts: Sequence[Any]) -> bool:
    return all(
        isinstance(p, str) or (isinstance(p, Mapping) and p.get("type") == "text")
        for p in parts
    )


def _flatten(content: Any) -> tuple[Any, bool]:
    """Plain-string content, or the original when it has non-text parts."""
    if content is None:
        return "", True
    if isinstance(content, str):
        return content, False
    if isinstance(content, Sequence) and _text_only(content):
        text = "".join(
            p if isinstance(p, str) else str(p.get("text", "")) for p in content
        )
        return text, True
    return content, False


def _normalize_arguments(arguments: Any) -> Any:
    # vLLM validates history arguments as strings (OpenAI schema) and parses
    # them into objects before the template runs, so objects become JSON text
    # here and both spellings reach the template as the same object.
    if isinstance(arguments, Mapping):
        return json.dumps(arguments, ensure_ascii=False)
    return arguments


def _materialize(message: Mapping[str, Any]) -> None:
    """Turn one-shot iterables (pydantic's ``ValidatorIterator`` for
    ``tool_calls`` and content parts) into lists, in place, so that reading
    them here does not exhaust them for vLLM's later readers."""
    if not isinstance(message, dict):
        return
    for key in ("tool_calls", "content"):
        value = message.get(key)
        if value is not None and not isinstance(value, (str, list, Mapping)):
            message[key] = list(value)


def _function(call: Mapping[str, Any]) -> Mapping[str, Any]:
    function = call.get("function")
    return function if isinstance(function, Mapping) else {}


def normalize_messages(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], NormalizationReport]:
    """Return canonical copies of ``messages`` and a report of the changes."""
    report = NormalizationReport()
    out: list[dict[str, Any]] = []
    # original id -> canonical ids not yet answered, in call order
    by_id: dict[str, list[str]] = {}
    names: dict[str, str] = {}  # canonical id -> tool name
    # Canonical ids of the last assistant turn not answered yet (ordered).
    unanswered: OrderedDict[str, None] = OrderedDict()
    blocks: dict[int, _Block] = {}  # tool-result blocks, by first index
    starts: list[int] = []  # where each message's run of tool results began
    for i, message in enumerate(messages):
        follows = i > 0 and starts and messages[i - 1].get("role") == "tool"
        starts.append(starts[-1] if follows and message.get("role") == "tool" else i)
    counter = 0

    for i, message in enumerate(messages):
        _materialize(message)
        # Shallow: every field rewritten below gets a new object.
        msg = dict(message)
        role = msg.get("role")
        if "content" in msg or role in ("assistant", "tool"):
            content, changed = _flatten(msg.get("content"))
            if changed and msg.get("content") is not None:
                report.contents_flattened += 1
            msg["content"] = content
        if role == "assistant" and msg.get("reasoning") is None:
            reasoning = msg.get("reasoning_content")
            if isinstance(reasoning, str):
                msg["reasoning"] = reasoning

        if role == "assistant" and msg.get("tool_calls"):
            unanswered = OrderedDict()
            calls = []
            for call in msg["tool_calls"]:
                call = dict(call)
                function = dict(_function(call))
                name = str(function.get("name") or "unknown")
                canonical = make_tool_call_id(name, counter)
                counter += 1
                original = call.get("id")
                if isinstance(original, str) and original:
                    by_id.setdefault(original, []).append(canonical)
                    if original != canonical:
                        report.id_map[original] = canonical
                call["id"] = canonical
                call.setdefault("type", "function")
                if "arguments" in function:
                    function["arguments"] = _normalize_arguments(function["arguments"])
                call["function"] = function
                calls.append(call)
                names[canonical] = name
                unanswered[canonical] = None
            msg["tool_calls"] = calls
        elif role == "tool":
            original = msg.get("tool_call_id")
            canonical = _match_result(
                original, by_id, unanswered, messages, i, blocks, starts, report
            )
            if canonical is None:
                guess = msg.get("name")
                if not isinstance(guess, str) or not guess:
                    guess = (
                        resolve_tool_call_id(original, ()).guessed_name
                        if isinstance(original, str) and original
                        else "unknown"
                    )
                canonical = make_tool_call_id(guess, counter)
                counter += 1
                names[canonical] = guess
                report.orphan_results.append(str(original))
            unanswered.pop(canonical, None)
            msg["tool_call_id"] = canonical
            if not msg.get("name"):
                msg["name"] = names[canonical]
                report.names_added += 1
        out.append(msg)
    report.tool_call_count = counter
    return out, report


@dataclass(slots=True)
class _Block:
    """A run of tool results: may its unknown ids be matched by position?"""

    by_order: bool
    end: int


def _block(
    messages: Sequence[Mapping[str, Any]], start: int, by_id: dict[str, list[str]]
) -> _Block:
    end = start
    while end + 1 < len(messages) and messages[end + 1].get("role") == "tool":
        end += 1
    ids = {str(messages[j].get("tool_call_id")) for j in range(start, end + 1)}
    unknown = sum(
        1
        for j in range(start, end + 1)
        if str(messages[j].get("tool_call_id")) not in by_id
    )
    if start == 0 or messages[start - 1].get("role") != "assistant":
        return _Block(False, end)
    turn = [c.get("id") for c in messages[start - 1].get("tool_calls") or []]
    answered_by_id = sum(1 for t in turn if isinstance(t, str) and t in ids)
    return _Block(unknown == len(turn) - answered_by_id, end)


def _match_result(
    original: Any,
    by_id: dict[str, list[str]],
    unanswered: dict[str, None],
    messages: Sequence[Mapping[str, Any]],
    index: int,
    blocks: dict[int, _Block],
    block_starts: Sequence[int],
    report: NormalizationReport,
) -> str | None:
    if isinstance(original, str) and by_id.get(original):
        queue = by_id[original]
        # Prefer an id still waiting for its result.
        for canonical in queue:
            if canonical in unanswered:
                queue.remove(canonical)
                return canonical
        return queue.pop(0)
    # Unknown id: match by position only when the whole block of results has
    # exactly as many unknown ids as its assistant turn has calls that no
    # known id answers. Each block is measured once (linear in its length).
    start = block_starts[index]
    if start not in blocks:
        blocks[start] = _block(messages, start, by_id)
    if not blocks[start].by_order or not unanswered:
        return None
    report.matched_by_order.append(str(original))
    return next(iter(unanswered))


def count_tool_calls(messages: Sequence[Mapping[str, Any]]) -> int:
    """The next canonical index after ``messages`` (orphan results included)."""
    return normalize_messages(messages)[1].tool_call_count
