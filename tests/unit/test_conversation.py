# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
from __future__ import annotations

import copy
import json

from kimi_testbed.conversations import CANONICAL, MESSY
from vllm_kimi_tools.chat.conversation import count_tool_calls, normalize_messages


def _parsed_args(messages: list) -> list:
    out = json.loads(json.dumps(messages))
    for message in out:
        for tc in message.get("tool_calls") or []:
            args = tc["function"]["arguments"]
            tc["function"]["arguments"] = (
                json.loads(args) if isinstance(args, str) else args
            )
    return out


def test_messy_normalises_to_canonical() -> None:
    out, report = normalize_messages(MESSY)
    assert _parsed_args(out) == _parsed_args(normalize_messages(CANONICAL)[0])
    for message in out:
        for tc in message.get("tool_calls") or []:
            assert isinstance(tc["function"]["arguments"], str)
    assert report.id_map["search:0"] == "functions.search:0"
    assert report.id_map["call_9f2c"] == "functions.open_url:1"
    assert report.matched_by_order == ["lost-id"]
    assert report.tool_call_count == 4


def test_canonical_is_a_fixed_point() -> None:
    out, report = normalize_messages(CANONICAL)
    assert _parsed_args(out) == _parsed_args(CANONICAL)
    assert report.id_map == {}
    assert report.names_added == 0


def test_input_is_not_mutated() -> None:
    before = copy.deepcopy(MESSY)
    normalize_messages(MESSY)
    assert before == MESSY


def test_ambiguous_unknown_results_keep_their_own_ids() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "a", "function": {"name": "s", "arguments": "{}"}},
                {"id": "b", "function": {"name": "s", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "x", "content": "1"},
        {"role": "tool", "tool_call_id": "y", "content": "2"},
        {"role": "tool", "tool_call_id": "z", "content": "3"},
    ]
    out, report = normalize_messages(messages)
    assert report.matched_by_order == []
    assert report.orphan_results == ["x", "y", "z"]
    ids = [m["tool_call_id"] for m in out[2:]]
    assert ids == ["functions.x:2", "functions.y:3", "functions.z:4"]
    assert count_tool_calls(messages) == 5


def test_duplicate_client_ids_answer_in_order() -> None:
    call = {"id": "dup", "function": {"name": "s", "arguments": "{}"}}
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [call, call]},
        {"role": "tool", "tool_call_id": "dup", "content": "1"},
        {"role": "tool", "tool_call_id": "dup", "content": "2"},
    ]
    out, _ = normalize_messages(messages)
    assert [m["tool_call_id"] for m in out[1:]] == ["functions.s:0", "functions.s:1"]


def test_reasoning_content_reaches_vllm_field() -> None:
    messages = [{"role": "assistant", "content": "x", "reasoning_content": "hm"}]
    out, _ = normalize_messages(messages)
    assert out[0]["reasoning"] == "hm"
    assert out[0]["reasoning_content"] == "hm"


def test_image_parts_are_left_alone() -> None:
    content = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}]
    out, _ = normalize_messages([{"role": "user", "content": content}])
    assert out[0]["content"] == content


def test_ten_thousand_unknown_results_are_matched_by_order() -> None:
    """One pass per block: the rewrite stays linear in the history."""
    n = 10_000
    calls = [
        {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "f", "arguments": "{}"},
        }
        for i in range(n)
    ]
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        *({"role": "tool", "tool_call_id": f"u{i}", "content": "r"} for i in range(n)),
    ]
    out, report = normalize_messages(messages)
    assert [m["tool_call_id"] for m in out[2:]] == [
        f"functions.f:{i}" for i in range(n)
    ]
    assert len(report.matched_by_order) == n and report.tool_call_count == n
