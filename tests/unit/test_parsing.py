# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Raw Kimi output -> content, calls and dropped calls, streaming and not."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kimi_text import ARG, CALL, END, SEC, SEC_END, TOOLS, call, section
from vllm_kimi_tools import tokens
from vllm_kimi_tools.parser.tool_calls import (
    DropReason,
    KimiToolCallParser,
    ParseDelta,
    parse_tool_calls,
)
from vllm_kimi_tools.tools import DeclaredTool

W = {"city": "Tokyo"}
Q = {"queries": ["a", "b"]}
ALL_MARKERS = (
    SEC,
    SEC_END,
    CALL,
    ARG,
    END,
    tokens.TOOL_CALL_SECTION_BEGIN_ALT,
    tokens.TOOL_CALL_SECTION_END_ALT,
    *tokens.CHAT_CONTROL_TOKENS,
)

# (raw output, content, [(name, args)], [drop reasons])
CASES = [
    pytest.param("Hello there.", "Hello there.", [], [], id="plain_text"),
    pytest.param(
        "Sure." + section(call("functions.get_weather:0", W)),
        "Sure.",
        [("get_weather", W)],
        [],
        id="canonical",
    ),
    pytest.param(
        section(call("search:2", Q)), "", [("search", Q)], [], id="no_functions_prefix"
    ),
    pytest.param(
        section(call("functions_get_weather_1", W)),
        "",
        [("get_weather", W)],
        [],
        id="underscore_id",
    ),
    pytest.param(
        section(call("functionsget_weather1", W)),
        "",
        [("get_weather", W)],
        [],
        id="glued_id",
    ),
    pytest.param(
        section(call("functions.mcp:fs.read-file:0", {"p": 1})),
        "",
        [("mcp:fs.read-file", {"p": 1})],
        [],
        id="name_with_colon_dot_dash",
    ),
    pytest.param(
        section(call("call_9f2c", Q)),
        "",
        [("search", Q)],
        [],
        id="opaque_id_schema_match",
    ),
    pytest.param(
        section(call("call_9f2c", {"unknown": 1})),
        "",
        [],
        [DropReason.UNRESOLVED],
        id="opaque_id_no_unique_match",
    ),
    pytest.param(
        section(call("3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f", W)),
        "",
        [("get_weather", W)],
        [],
        id="uuid_id_schema_match",
    ),
    pytest.param(
        section(call("\nfunctions.search:0\n", Q)),
        "",
        [("search", Q)],
        [],
        id="newlines_around_id",
    ),
    pytest.param(
        "Hi" + CALL + "functions.search:0" + ARG + json.dumps(Q) + END,
        "Hi",
        [("search", Q)],
        [],
        id="bare_call_without_section",
    ),
    pytest.param(
        SEC + call("functions.search:0", Q),
        "",
        [("search", Q)],
        [],
        id="missing_section_end",
    ),
    pytest.param(
        SEC + CALL + "functions.search:0" + ARG + json.dumps(Q),
        "",
        [("search", Q)],
        [],
        id="missing_call_and_section_end_complete_json",
    ),
    pytest.param(
        section(call("functions.search:0", Q)) + "Done.",
        "Done.",
        [("search", Q)],
        [],
        id="text_after_section",
    ),
    pytest.param(
        tokens.TOOL_CALL_SECTION_BEGIN_ALT
        + call("functions.search:0", Q)
        + tokens.TOOL_CALL_SECTION_END_ALT,
        "",
        [("search", Q)],
        [],
        id="singular_section_marker",
    ),
    pytest.param(
        section(call("functions.search:0", Q), call("functions.get_weather:1", W)),
        "",
        [("search", Q), ("get_weather", W)],
        [],
        id="two_calls",
    ),
    pytest.param(
        section(
            call("functions.search:0", Q)
            + CALL
            + "functions.get_weather:1"
            + ARG
            + json.dumps(W)
        ),
        "",
        [("search", Q), ("get_weather", W)],
        [],
        id="missing_call_end_between_calls",
    ),
    pytest.param(
        section(call("functions.search:0", Q), call("functions.search:0", Q)),
        "",
        [("search", Q), ("search", Q)],
        [],
        id="duplicate_model_ids",
    ),
    pytest.param(
        "<think>I should look." + section(call("functions.search:0", Q)),
        "<think>I should look.",
        [("search", Q)],
        [],
        id="call_inside_unterminated_think",
    ),
    pytest.param(
        "<think>hm" + CALL + "functions.search:0" + ARG + json.dumps(Q) + END,
        "<think>hm",
        [("search", Q)],
        [],
        id="bare_call_inside_think",
    ),
    pytest.param(
        section(call("functions.search:0", json.dumps(json.dumps(Q)))),
        "",
        [("search", Q)],
        [],
        id="string_encoded_arguments",
    ),
    pytest.param(
        section(call("functions.search:0", "")), "", [("search", {})], [], id="empty"
    ),
    pytest.param(
        section(call("functions.img_gen:0", {"prompt": "cat"})),
        "",
        [],
        [DropReason.UNDECLARED],
        id="undeclared_tool",
    ),
    pytest.param(
        section(call("functions.search:0", "[1, 2]")),
        "",
        [],
        [DropReason.INVALID_ARGUMENTS],
        id="array_arguments",
    ),
    pytest.param(
        section(call("functions.search:0", '{"queries": [x]}')),
        "",
        [],
        [DropReason.INVALID_ARGUMENTS],
        id="invalid_json",
    ),
    pytest.param(
        section(call("functions.search:0", '{"a": NaN}')),
        "",
        [],
        [DropReason.INVALID_ARGUMENTS],
        id="nan_is_not_json",
    ),
    pytest.param(
        "Let me." + SEC + CALL + "functions.search:0" + ARG + '{"queries": ["a',
        "Let me.",
        [],
        [DropReason.TRUNCATED],
        id="truncated_in_arguments",
    ),
    pytest.param(
        SEC + CALL + "functions.sea", "", [], [DropReason.TRUNCATED], id="truncated_id"
    ),
    pytest.param(
        section(call("functions.search:0", Q)) + SEC + CALL + "functions.search:1",
        "",
        [("search", Q)],
        [DropReason.TRUNCATED],
        id="complete_then_truncated",
    ),
    pytest.param(
        section(call("functions.search:0", {"queries": ["a" + END + SEC_END + "b"]})),
        "",
        [("search", {"queries": ["a" + END + SEC_END + "b"]})],
        [],
        id="markers_inside_json_string",
    ),
    pytest.param(
        section(call("functions.search:0", {"queries": ['say "hi" \\' + END]})),
        "",
        [("search", {"queries": ['say "hi" \\' + END]})],
        [],
        id="escapes_inside_json_string",
    ),
    pytest.param(
        SEC + CALL + "functions.get_weather:0" + '{"city": "Oslo"}' + END + SEC_END,
        "",
        [("get_weather", {"city": "Oslo"})],
        [],
        id="missing_argument_marker",
    ),
    pytest.param(
        "a" + END + "b" + SEC_END + "c" + ARG + "d",
        "abcd",
        [],
        [],
        id="stray_markers_dropped",
    ),
    pytest.param(
        SEC + "Sorry, no tool fits." + SEC_END,
        "Sorry, no tool fits.",
        [],
        [],
        id="text_inside_empty_section_kept",
    ),
    pytest.param(
        section(call("functions.search:0", Q)) + tokens.IM_END,
        "",
        [("search", Q)],
        [],
        id="im_end_dropped",
    ),
]


def _stream(text: str, sizes: list[int], history: int = 0) -> ParseDelta:
    parser = KimiToolCallParser(TOOLS, history)
    out = ParseDelta()
    pos = 0
    for size in sizes:
        out.extend(parser.feed(text[pos : pos + size]))
        pos += size
    out.extend(parser.feed(text[pos:]))
    out.extend(parser.finish())
    return out


def _assert_clean(content: str) -> None:
    for marker in ALL_MARKERS:
        assert marker not in content


@pytest.mark.parametrize("raw, content, calls, dropped", CASES)
def test_parse_table(raw, content, calls, dropped) -> None:
    result = parse_tool_calls(raw, TOOLS, history_tool_calls=4)
    assert result.content == content
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == calls
    assert [d.reason for d in result.dropped] == dropped
    # Canonical, unique ids that continue the conversation's count.
    assert [c.id for c in result.tool_calls] == [
        f"functions.{c.name}:{4 + i}" for i, c in enumerate(result.tool_calls)
    ]
    assert [c.index for c in result.tool_calls] == list(range(len(calls)))


@pytest.mark.parametrize("raw, content, calls, dropped", CASES)
def test_every_two_way_split_matches(raw, content, calls, dropped) -> None:
    whole = parse_tool_calls(raw, TOOLS)
    for cut in range(len(raw) + 1):
        assert _stream(raw, [cut]) == whole, cut
    rng = random.Random(20261122)
    for _ in range(30):
        sizes = [rng.randint(0, 9) for _ in range(len(raw))]
        assert _stream(raw, sizes) == whole


def test_valid_arguments_are_returned_byte_for_byte() -> None:
    args = '{ "city" :  "Tō\\u006byo" }'
    result = parse_tool_calls(section(call("functions.get_weather:0", args)), TOOLS)
    assert result.tool_calls[0].arguments == args.strip()


def test_only_declared_tool_takes_opaque_id() -> None:
    tools = [DeclaredTool("get_weather", None)]
    result = parse_tool_calls(section(call("call_ab12", {"x": 1})), tools)
    assert [(c.name, c.id) for c in result.tool_calls] == [
        ("get_weather", "functions.get_weather:0")
    ]
    # An id that names another tool is never re-targeted to the only tool.
    result = parse_tool_calls(section(call("functions.rm:0", {"x": 1})), tools)
    assert result.tool_calls == []
    assert result.dropped[0].reason is DropReason.UNDECLARED


def test_no_tools_declared_drops_calls_without_leaking() -> None:
    raw = "ok" + section(call("functions.search:0", Q))
    result = parse_tool_calls(raw, [])
    assert result.content == "ok"
    assert result.tool_calls == []
    assert [d.name for d in result.dropped] == ["search"]


def test_dropped_calls_do_not_consume_indices() -> None:
    raw = section(
        call("functions.nope:0", {}),
        call("functions.search:1", Q),
        call("functions.get_weather:2", W),
    )
    result = parse_tool_calls(raw, TOOLS, history_tool_calls=2)
    assert [c.id for c in result.tool_calls] == [
        "functions.search:2",
        "functions.get_weather:3",
    ]


def test_feed_after_finish_raises() -> None:
    parser = KimiToolCallParser(TOOLS)
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


def test_long_output_is_linear() -> None:
    # 20k tokens of arguments streamed one character at a time: the parser
    # must not re-scan the whole text per delta (bounded wall time would be a
    # timed assertion; count the characters scanned by the marker search).
    long_args = json.dumps({"queries": ["x" * 20000]})
    raw = section(call("functions.search:0", long_args))
    parser = KimiToolCallParser(TOOLS)
    pending_max = 0
    out = ParseDelta()
    for ch in raw:
        out.extend(parser.feed(ch))
        pending_max = max(pending_max, len(parser._pending))
    out.extend(parser.finish())
    assert pending_max < 40
    assert json.loads(out.tool_calls[0].arguments) == json.loads(long_args)


_pieces = st.one_of(
    st.sampled_from(ALL_MARKERS),
    st.sampled_from(
        [
            "functions.search:0",
            "search:1",
            "call_x1",
            "functions.img:0",
            json.dumps(Q),
            json.dumps(W),
            '"',
            "\\",
            "{",
            "}",
            "<",
            "<|",
            "<|tool",
            "<think>",
            " ",
            "\n",
        ]
    ),
    st.text(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_pieces, max_size=25), data=st.data())
def test_garbage_never_raises_leaks_or_depends_on_split(pieces, data) -> None:
    raw = "".join(pieces)
    whole = parse_tool_calls(raw, TOOLS, history_tool_calls=1)
    _assert_clean(whole.content)
    for c in whole.tool_calls:
        assert isinstance(json.loads(c.arguments), dict)
        assert c.name in {t.name for t in TOOLS}
    sizes = data.draw(st.lists(st.integers(0, 12), max_size=len(raw) + 1))
    assert _stream(raw, sizes, history=1) == whole


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.text(alphabet=st.characters(exclude_characters="<"), max_size=20),
    args=st.dictionaries(
        st.text(max_size=6), st.one_of(st.text(max_size=10), st.integers()), max_size=4
    ),
    data=st.data(),
)
def test_any_valid_call_survives_any_split(prefix, args, data) -> None:
    raw = prefix + section(call("functions.get_weather:0", args))
    sizes = data.draw(st.lists(st.integers(0, 12), max_size=len(raw) + 1))
    out = _stream(raw, sizes)
    assert out.content == prefix
    assert [json.loads(c.arguments) for c in out.tool_calls] == [args]
