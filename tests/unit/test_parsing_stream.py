# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Arguments streamed as they are written (``stream_arguments``).

What a client receives (``call_deltas``, joined per index) must equal the
non-streaming ``tool_calls`` for every way of splitting the output, the id
and name must come once, in a call's first piece, and the first argument
byte must go out as soon as the model writes it.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kimi_text import ARG, CALL, END, SEC, SEC_END, TOOLS, call, section
from vllm_kimi_tools.parser.tool_calls import (
    DropReason,
    KimiToolCallParser,
    ParseDelta,
    ToolCallDelta,
    parse_tool_calls,
)

STREAMED = ("get_weather", "search")
LONG = {"city": "Tokyo " * 200}

OUTPUTS = [
    pytest.param(section(call("functions.get_weather:0", LONG)), id="long_call"),
    pytest.param(
        "Sure."
        + section(
            call("functions.get_weather:0", {"city": "Oslo"}),
            call("functions.search:1", {"queries": ["a", "b"]}),
        ),
        id="two_calls",
    ),
    pytest.param(
        section(call("functions.get_weather:0", '  { "city" :  "Tō" }  \n ')),
        id="blanks_around_and_inside",
    ),
    pytest.param(
        section(call("functions.search:0", json.dumps('{"queries": ["x"]}'))),
        id="string_encoded",
    ),
    pytest.param(section(call("functions.get_weather:0", "")), id="empty_body"),
    pytest.param(
        section(call("functions.get_weather:0", '{"city": "a' + END + 'b"}')),
        id="marker_inside_a_string",
    ),
    pytest.param(
        SEC
        + CALL
        + "functions.get_weather:0"
        + ARG
        + '{"city": "a'
        + END
        + SEC_END
        + "Bye.",
        id="marker_in_a_string_that_never_closes",
    ),
    pytest.param(
        SEC + CALL + "functions.get_weather:0" + ARG + '{"city": "a' + END + 'b"',
        id="marker_in_a_closed_string_then_truncated",
    ),
    pytest.param(
        section(
            call("functions.mcp:fs.read-file:0", {"p": 1}),
            call("functions.get_weather:1", {"city": "Rome"}),
        ),
        id="not_streamed_then_streamed",
    ),
    pytest.param(
        section(
            call("functions.get_weather:0", '{"city": '),
            call("functions.search:1", {"queries": []}),
        ),
        id="invalid_streamed_call_then_another",
    ),
    pytest.param(
        SEC + CALL + "functions.get_weather:0" + ARG + '{"city": "Tok',
        id="truncated",
    ),
    pytest.param(section(call("functions.not_declared:0", {"x": 1})), id="undeclared"),
]


def _feed(text: str, cuts: list[int]) -> list[ParseDelta]:
    parser = KimiToolCallParser(TOOLS, 2, stream_arguments=STREAMED)
    pieces, pos = [], 0
    for cut in sorted(cuts):
        pieces.append(parser.feed(text[pos:cut]))
        pos = cut
    pieces.append(parser.feed(text[pos:]))
    pieces.append(parser.finish())
    return pieces


def _received(steps: list[ParseDelta]) -> dict[int, tuple[list, str]]:
    """Per index: the (id, name) pairs sent and the joined argument text."""
    out: dict[int, tuple[list, str]] = defaultdict(lambda: ([], ""))
    for step in steps:
        for piece in step.call_deltas:
            heads, args = out[piece.index]
            if piece.id is not None:
                heads.append((piece.id, piece.name))
            else:
                assert piece.name is None
            out[piece.index] = (heads, args + piece.arguments)
    return dict(out)


@pytest.mark.parametrize("text", OUTPUTS)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_every_split_sends_what_non_streaming_returns(text, data) -> None:
    whole = parse_tool_calls(text, TOOLS, 2, stream_arguments=STREAMED)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    steps = _feed(text, cuts)
    received = _received(steps)
    merged = ParseDelta()
    for step in steps:
        merged.extend(step)
    assert merged == whole  # content, calls, drops and the merged pieces
    for c in whole.tool_calls:
        heads, args = received.pop(c.index)
        assert heads == [(c.id, c.name)]
        assert args == c.arguments
    # What is left went out before its call was dropped: a header, then a
    # prefix of the text the model wrote.
    dropped = [d for d in whole.dropped if d.streamed]
    assert len(received) == len(dropped)
    for (heads, args), d in zip(received.values(), dropped):
        assert len(heads) == 1 and heads[0][1] == d.name
        assert d.arguments.strip().startswith(args)


def test_arguments_go_out_as_they_are_written() -> None:
    args = json.dumps(LONG)
    text = SEC + CALL + "functions.get_weather:0" + ARG + args + END + SEC_END
    parser = KimiToolCallParser(TOOLS, 0, stream_arguments=STREAMED)
    head = text.index(ARG) + len(ARG)
    step = parser.feed(text[:head])
    assert step.call_deltas == [
        ToolCallDelta(0, "functions.get_weather:0", "get_weather", "")
    ]
    sent = ""
    end = head + len(args)
    for i in range(head, end, 7):
        step = parser.feed(text[i : min(i + 7, end)])
        sent += "".join(p.arguments for p in step.call_deltas)
        # Everything written so far is out, but a trailing blank.
        assert args[: i + 7 - head].rstrip() == sent
    rest = parser.feed(text[head + len(args) :])
    rest.extend(parser.finish())
    assert [c.arguments for c in rest.tool_calls] == [args]
    assert not rest.call_deltas  # nothing more to send: it all went out


def test_tools_not_named_stream_whole_at_the_end() -> None:
    text = section(call("functions.get_weather:0", LONG))
    parser = KimiToolCallParser(TOOLS, 0, stream_arguments=("search",))
    early = parser.feed(text[: -len(END + SEC_END) - 5])
    assert not early.call_deltas and not early.tool_calls
    late = parser.feed(text[-len(END + SEC_END) - 5 :])
    late.extend(parser.finish())
    assert late.call_deltas == [
        ToolCallDelta(0, "functions.get_weather:0", "get_weather", json.dumps(LONG))
    ]


def test_string_encoded_arguments_arrive_unwrapped_at_close() -> None:
    inner = {"queries": ["x"]}
    text = section(call("functions.search:0", json.dumps(json.dumps(inner))))
    parser = KimiToolCallParser(TOOLS, 0, stream_arguments=STREAMED)
    early = parser.feed(text[: text.index(END)])
    assert early.call_deltas == [ToolCallDelta(0, "functions.search:0", "search")]
    late = parser.feed(text[text.index(END) :])
    late.extend(parser.finish())
    assert late.call_deltas == [ToolCallDelta(0, arguments=json.dumps(inner))]


def test_a_truncated_streamed_call_keeps_its_index_and_is_reported() -> None:
    text = SEC + CALL + "functions.search:0" + ARG + '{"queries": ["a'
    result = parse_tool_calls(text, TOOLS, 0, stream_arguments=STREAMED)
    assert not result.tool_calls
    assert [(d.reason, d.streamed) for d in result.dropped] == [
        (DropReason.TRUNCATED, True)
    ]
    assert result.call_deltas == [
        ToolCallDelta(0, "functions.search:0", "search", '{"queries": ["a')
    ]


def test_ids_count_streamed_calls_that_were_dropped() -> None:
    # The stream already sent index 0 for the broken call: the next call is
    # 1 in both paths, so streaming and non-streaming ids agree.
    text = section(
        call("functions.get_weather:0", '{"city": '),
        call("functions.search:1", {"queries": []}),
    )
    result = parse_tool_calls(text, TOOLS, 0, stream_arguments=STREAMED)
    assert [(c.index, c.id) for c in result.tool_calls] == [(1, "functions.search:1")]
    assert [d.streamed for d in result.dropped] == [True]


def test_without_stream_arguments_nothing_changes() -> None:
    text = section(call("functions.get_weather:0", '{"city": '))
    text += section(call("functions.search:1", {"queries": []}))
    result = parse_tool_calls(text, TOOLS, 0)
    assert [(c.index, c.id) for c in result.tool_calls] == [(0, "functions.search:0")]
    assert [d.streamed for d in result.dropped] == [False]
