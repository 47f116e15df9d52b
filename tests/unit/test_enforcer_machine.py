# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer's wire-format state machine: what may come next, per phase."""

from __future__ import annotations

import numpy as np
import pytest

from kimi_testbed import wire
from kimi_testbed.wire import section
from tests.enforcer_kit import allowed, drive, enforcer_for
from vllm_kimi_tools.enforcer.machine import Phase
from vllm_kimi_tools.enforcer.prompt import OutputStart

pytest.importorskip("xgrammar")

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TOOLS = {"get_weather": WEATHER, "search": {"type": "object"}}
REQ, NAMED = {"choice": "required"}, {"named": "get_weather"}
ARGS = '{"city": "Oslo"}'


def call(name: str, idx: int, args: str = ARGS) -> str:
    return wire.call(name, args, idx)


def ids(tok, *texts: str) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in texts]


@pytest.mark.parametrize(
    ("text", "kw", "ok"),
    [
        ("Let me look." + section(call("get_weather", 0)) + "<|im_end|>", {}, True),
        ("plain answer<|im_end|>", {}, True),
        (section(call("search", 0, "{}"), call("get_weather", 1)), {}, True),
        # undeclared tool, non-canonical ids, IDX not the running count
        (section(call("get_time", 0)), {}, False),
        ("<|tool_calls_section_begin|><|tool_call_begin|>get_weather:0", {}, False),
        (section(call("get_weather", 1)), {}, False),
        (section(call("get_weather", 0)), {"first_index": 3}, False),
        (section(call("get_weather", 3)), {"first_index": 3}, True),
        # stray markup in text; text after the section
        ("a<|tool_call_end|>", {}, False),
        ("a<|tool_calls_section_end|>", {}, False),
        (section(call("get_weather", 0)) + "more", {}, False),
        # an empty section; whitespace between markers
        ("<|tool_calls_section_begin|><|tool_calls_section_end|>", {}, False),
        ("<|tool_calls_section_begin|> <|tool_call_begin|>", {}, False),
        # thinking: only as the first thing, calls may follow it
        ("<think>hm</think>" + section(call("get_weather", 0)), {}, True),
        ("hi<think>", {}, False),
        # a bare call (no section wrapper) opens an implicit section, which
        # may end with the turn; in thinking it ends the thinking
        ("a" + call("get_weather", 0) + "<|im_end|>", {}, True),
        ("a" + call("get_weather", 0) + "<|tool_calls_section_end|>", {}, True),
        ("a" + call("get_weather", 0) + call("search", 1, "{}"), {}, True),
        ("a" + call("get_time", 0), {}, False),
        ("<think>a" + call("get_weather", 0) + "<|im_end|>", {}, True),
        (section(call("get_weather", 0)) + "<|tool_call_begin|>", {}, False),
        ("a" + call("get_weather", 0) + "more", {}, False),
        ("<think>a" + section(call("get_weather", 0)), {}, True),
        # required / named / parallel_tool_calls=false
        ("text first", {"choice": "required"}, False),
        (section(call("search", 0, "{}")), {"choice": "required"}, True),
        (
            "<think>x</think>" + section(call("search", 0, "{}")),
            {"choice": "required"},
            True,
        ),
        (section(call("search", 0, "{}")), {"named": "get_weather"}, False),
        (
            section(call("get_weather", 0), call("get_weather", 1)),
            {"named": "get_weather"},
            False,
        ),
        (section(call("get_weather", 0)), {"named": "get_weather"}, True),
        (
            section(call("search", 0, "{}"), call("get_weather", 1)),
            {"parallel": False},
            False,
        ),
    ],
)
def test_wire_format(tiny_store, tiny_tokenizer, text, kw, ok) -> None:
    result = drive(enforcer_for(tiny_store, TOOLS, **kw), tiny_tokenizer, text)
    assert result.ok is ok, result


def test_after_the_section_only_the_end_of_turn(tiny_store, tiny_tokenizer) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS)
    assert drive(enforcer, tiny_tokenizer, section(call("get_weather", 0))).ok
    assert enforcer.phase is Phase.AFTER
    mask = allowed(enforcer, tiny_store.table.vocab_size)
    assert sorted(np.flatnonzero(mask)) == sorted(
        ids(tiny_tokenizer, "<|im_end|>", "[EOS]")
    )


def test_no_special_token_inside_arguments(tiny_store, tiny_tokenizer) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS)
    prefix = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "O'
    )
    assert drive(enforcer, tiny_tokenizer, prefix).ok
    mask = allowed(enforcer, tiny_store.table.vocab_size)
    vocab = tiny_store.table.vocab_size
    assert mask[:vocab].sum() > vocab // 2  # a free string: most tokens
    for special in tiny_store.table.special_ids:
        assert not mask[special], tiny_tokenizer.convert_ids_to_tokens(special)
    # Once the object is complete, <|tool_call_end|> is allowed (alone).
    assert drive(enforcer, tiny_tokenizer, 'slo"}').ok
    mask = allowed(enforcer, tiny_store.table.vocab_size)
    call_end = tiny_store.table.markers.call_end
    assert mask[call_end]
    assert not any(mask[s] for s in tiny_store.table.special_ids - {call_end})


def test_header_offers_only_declared_names_at_the_pinned_index(
    tiny_store, tiny_tokenizer
) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS, first_index=7)
    assert drive(
        enforcer,
        tiny_tokenizer,
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.",
    ).ok
    offered = {
        tiny_tokenizer.decode([i])
        for i in np.flatnonzero(allowed(enforcer, tiny_store.table.vocab_size))
    }
    assert offered and all(
        "get_weather:7".startswith(o) or "search:7".startswith(o) for o in offered
    )
    assert drive(enforcer, tiny_tokenizer, "search:7").ok
    assert np.flatnonzero(allowed(enforcer, tiny_store.table.vocab_size)).tolist() == [
        tiny_store.table.markers.argument_begin
    ]


def test_refused_token_turns_the_enforcer_off(tiny_store, tiny_tokenizer) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS)
    assert not enforcer.accept(tiny_store.table.markers.call_end)
    assert enforcer.phase is Phase.OFF and "not allowed" in enforcer.off_reason
    assert enforcer.directive(None) is None  # no mask any more


def test_accept_refuses_what_the_length_mask_refused(
    tiny_store, tiny_tokenizer
) -> None:
    """The masks beyond the grammar bind ``accept`` too: a token the row
    refused stands the Enforcer down even where the grammar allows it."""
    bounded = {
        "type": "object",
        "properties": {"v": {"type": "string", "maxLength": 2}},
    }
    enforcer = enforcer_for(tiny_store, {"f": bounded})
    prefix = call("f", 0, '{"v":"ab').removesuffix("<|tool_call_end|>")
    assert drive(enforcer, tiny_tokenizer, "<|tool_calls_section_begin|>" + prefix).ok
    (third,) = tiny_tokenizer.encode("c", add_special_tokens=False)
    assert not allowed(enforcer, tiny_store.table.vocab_size)[
        third
    ]  # a third character: over
    assert not enforcer.accept(third)
    assert enforcer.phase is Phase.OFF and "not allowed" in enforcer.off_reason


def test_rows_in_the_same_state_share_one_mask_beyond_the_grammar(
    tiny_store, tiny_tokenizer
) -> None:
    """Two requests at the same point of a bounded string share one
    read-only array for the masks beyond the grammar: the AND of the marker,
    quote and length masks, computed once; a row is the grammar's AND it."""
    bounded = {
        "type": "object",
        "properties": {"v": {"type": "string", "maxLength": 3}},
    }
    table = tiny_store.table
    prefix = "<|tool_calls_section_begin|>" + call("f", 0, '{"v":"a').removesuffix(
        "<|tool_call_end|>"
    )
    rows, beyond = [], []
    for _ in range(2):
        enforcer = enforcer_for(tiny_store, {"f": bounded})
        assert drive(enforcer, tiny_tokenizer, prefix).ok
        row = np.full((table.vocab_size + 31) // 32, -1, np.int32)
        enforcer.directive(row)
        rows.append(row)
        beyond.append(enforcer._narrowed)
    assert beyond[0] is beyond[1] and not beyond[0].flags.writeable
    cursor = enforcer.cursor
    assert cursor is not None
    where = cursor.where()
    lengths = enforcer._lengths_here(enforcer._by_name["f"], cursor, where)
    assert lengths is not None
    parts = (
        table.special_clear_words
        & table.quotes.words(where)
        & table.lengths.words(cursor.chars, lengths, cursor.escape_left)
    )
    assert np.array_equal(beyond[0], parts)
    grammar = np.full_like(rows[0], -1)
    enforcer.fill_grammar(grammar)
    assert np.array_equal(rows[0], grammar & parts)
    assert np.array_equal(rows[0], rows[1])


def test_with_no_tool_callable_no_call_opens(tiny_store, tiny_tokenizer) -> None:
    huge = {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 99_999}},
        "required": ["s"],
    }
    enforcer = enforcer_for(tiny_store, {"f": huge}, max_tokens=50)
    assert enforcer.spec.tools == ()  # not offered: no call fits in 50 tokens
    assert drive(enforcer, tiny_tokenizer, "Sure, in text.<|im_end|>").ok
    for text in ("<|tool_calls_section_begin|>", "<|tool_call_begin|>"):
        enforcer = enforcer_for(tiny_store, {"f": huge}, max_tokens=50)
        assert not drive(enforcer, tiny_tokenizer, "a" + text).ok


def test_whitespace_runs_are_bounded(tiny_store, tiny_tokenizer) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS)
    prefix = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city":'
    )
    assert drive(enforcer, tiny_tokenizer, prefix + " " * 19).ok
    offered = [
        tiny_tokenizer.decode([i])
        for i in np.flatnonzero(allowed(enforcer, tiny_store.table.vocab_size))
    ]
    assert any(t.startswith(" ") for t in offered)  # 19 blanks: one more is fine
    assert drive(enforcer, tiny_tokenizer, " ").ok
    offered = [
        tiny_tokenizer.decode([i])
        for i in np.flatnonzero(allowed(enforcer, tiny_store.table.vocab_size))
    ]
    assert offered and not any(t[:1].isspace() for t in offered), offered
    assert drive(enforcer, tiny_tokenizer, '"Oslo"}').ok


THINKING, THOUGHT = OutputStart.THINKING, OutputStart.THOUGHT


@pytest.mark.parametrize(
    ("start", "text", "kw", "ok"),
    [
        # K2.5+, thinking on: the output starts inside thinking and may close it.
        (THINKING, "hm, Oslo</think>" + section(call("get_weather", 0)), {}, True),
        (THINKING, "hm</think>It is sunny.<|im_end|>", {}, True),
        (THINKING, "</think>Sunny.<|im_end|>", {}, True),
        (THINKING, "hm<think>", {}, False),
        (THINKING, "hm</think>a</think>", {}, False),
        # calls inside thinking stay allowed, as in K2-Thinking
        (THINKING, "hm" + section(call("get_weather", 0)) + "<|im_end|>", {}, True),
        (THINKING, "hm" + call("get_weather", 0) + "<|im_end|>", {}, True),
        (THINKING, "hm<|tool_call_end|>", {}, False),
        # forced: think as long as needed, then the section and nothing else
        (THINKING, "hm</think>" + section(call("search", 0, "{}")), REQ, True),
        (THINKING, "hm" + section(call("search", 0, "{}")), REQ, True),
        (THINKING, "hm</think>Sure.", REQ, False),
        (THINKING, "hm<|im_end|>", REQ, False),
        (THINKING, "hm</think>" + section(call("get_weather", 0)), NAMED, True),
        (THINKING, "hm</think>" + section(call("search", 0, "{}")), NAMED, False),
        # K2.5+, thinking off: neither marker again
        (THOUGHT, "Sunny.<|im_end|>", {}, True),
        (THOUGHT, "<think>hm</think>", {}, False),
        (THOUGHT, "</think>", {}, False),
        (THOUGHT, section(call("search", 0, "{}")), REQ, True),
        (THOUGHT, "<think>", REQ, False),
    ],
)
def test_output_that_starts_where_the_prompt_left_it(
    tiny_store, tiny_tokenizer, start, text, kw, ok
) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS, start=start, **kw)
    result = drive(enforcer, tiny_tokenizer, text)
    assert result.ok is ok, result


def test_think_end_is_banned_only_where_no_thinking_is_open(tiny_store) -> None:
    m = tiny_store.table.markers
    vocab = tiny_store.table.vocab_size
    for start, think_end in [
        (OutputStart.TEXT, False),
        (THINKING, True),
        (THOUGHT, False),
    ]:
        mask = allowed(enforcer_for(tiny_store, TOOLS, start=start), vocab)
        assert mask[m.think_end] is np.bool_(think_end), start
        assert mask[m.think_begin] is np.bool_(start is OutputStart.TEXT), start


REPLY = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
}


@pytest.mark.parametrize(
    ("text", "kw", "ok"),
    [
        # the text is the response_format's JSON, ended by the turn's end
        ('{"answer": 4}<|im_end|>', {}, True),
        ('<think>hm</think>{"answer": 4}<|im_end|>', {}, True),
        ('{"answer": "four"}', {}, False),
        ('{"answer": 4', {"end": "<|im_end|>"}, False),
        ("plain answer", {}, False),
        ('{"answer": 4}<|tool_call_end|>', {}, False),
        ('{"answer": 4} and more', {}, False),
        # or the calls instead of it, never both
        (section(call("get_weather", 0)) + "<|im_end|>", {}, True),
        ("<think>x</think>" + section(call("get_weather", 0)), {}, True),
        ('{"answer": 4}' + section(call("get_weather", 0)), {}, False),
        (section(call("get_weather", 0)) + '{"answer": 4}', {}, False),
        # forced calls: the reply never opens
        ('{"answer": 4}', {"choice": "required"}, False),
        (section(call("search", 0, "{}")), {"choice": "required"}, True),
    ],
)
def test_reply_is_the_json_or_the_calls(tiny_store, tiny_tokenizer, text, kw, ok):
    end = kw.pop("end", "")
    enforcer = enforcer_for(tiny_store, TOOLS, reply=REPLY, **kw)
    result = drive(enforcer, tiny_tokenizer, text + end)
    assert result.ok is ok, result


def test_the_reply_ends_only_once_complete(tiny_store, tiny_tokenizer) -> None:
    enforcer = enforcer_for(tiny_store, TOOLS, reply=REPLY)
    vocab = tiny_store.table.vocab_size
    (im_end,) = ids(tiny_tokenizer, "<|im_end|>")
    (section_begin,) = ids(tiny_tokenizer, "<|tool_calls_section_begin|>")
    first = allowed(enforcer, vocab)
    assert first[section_begin] and not first[im_end]
    assert drive(enforcer, tiny_tokenizer, '{"answer": 4').ok
    assert enforcer.phase is Phase.REPLY
    mask = allowed(enforcer, vocab)
    assert not mask[im_end] and not mask[section_begin]
    assert drive(enforcer, tiny_tokenizer, "}").ok
    assert allowed(enforcer, vocab)[im_end]
    assert drive(enforcer, tiny_tokenizer, "<|im_end|>").ok
    assert enforcer.phase is Phase.AFTER


TEXT, THINK = Phase.TEXT, Phase.THINK


@pytest.mark.parametrize(
    ("start", "text", "kw", "steady"),
    [
        (
            OutputStart.TEXT,
            "<think>hm a</think>ok" + section(call("search", 0, "{}")),
            {},
            {TEXT, THINK},
        ),
        (OutputStart.TEXT, "plain answer, twice over<|im_end|>", {}, {TEXT}),
        (
            THINKING,
            "thinking</think>then text" + section(call("search", 0, "{}")),
            {},
            {TEXT, THINK},
        ),
        # forced calls: thinking is steady, the text before the section is not
        (THINKING, "x</think>" + section(call("search", 0, "{}")), REQ, {THINK}),
        (OutputStart.TEXT, section(call("get_weather", 0)), NAMED, set()),
        # a JSON reply: the text is a grammar's
        (OutputStart.TEXT, '{"answer": 4}<|im_end|>', {"reply": REPLY}, set()),
    ],
)
def test_the_steady_ban_is_the_directive_where_it_is_given(
    tiny_store, tiny_tokenizer, start, text, kw, steady
) -> None:
    """The batch's fast path: wherever ``steady_ban`` is set it is exactly the
    directive, and an ordinary token taken there changes nothing else."""
    enforcer = enforcer_for(tiny_store, TOOLS, start=start, **kw)
    # The same tokens through ``accept_text`` wherever it takes them.
    fast = enforcer_for(tiny_store, TOOLS, start=start, **kw)
    special = tiny_store.table.special_ids
    seen = set()
    for token in tiny_tokenizer.encode(text, add_special_tokens=False):
        row = np.full((tiny_store.table.vocab_size + 31) // 32, -1, np.int32)
        ban, phase = enforcer.steady_ban, enforcer.phase
        # Kept with the phase: never stale against its derivation.
        assert ban == enforcer._steady_ban(), (phase, enforcer.tokens)
        if ban is not None:
            seen.add(phase)
            assert ban == enforcer.directive(row), phase
        assert enforcer.accept(token), enforcer.off_reason
        if ban is not None and token not in special:
            assert enforcer.phase is phase
            assert enforcer.steady_ban == ban or enforcer.tokens == 1
        took = fast.accept_text(token)
        assert took == (ban is not None and token not in special)
        assert took or fast.accept(token)
        assert (fast.phase, fast.tokens, fast.steady_ban) == (
            enforcer.phase,
            enforcer.tokens,
            enforcer.steady_ban,
        )
    assert enforcer.phase is not Phase.OFF
    assert seen == steady
    # Never a placeholder (async scheduling) or a marker: those need accept.
    assert not fast.accept_text(-1)
    assert not fast.accept_text(tiny_store.table.markers.section_begin)
