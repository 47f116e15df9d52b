# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer on Moonshot's real vocabulary: every special is special,
tokens that open and write a string in one step, and no empty row ever.

The property test walks random schemas (string properties combining
``minLength``/``maxLength``/``enum``/``format``/``anyOf``, arrays of them)
over the real 163,840-token vocabulary: every row must allow a token without
the safety net, and every walk that ends the call must pass ``jsonschema``.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from tests.enforcer_kit import allowed, drive, enforcer_for
from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.admission import (
    build_spec,
)
from vllm_kimi_tools.enforcer.lengths import (
    LengthMasks,
    Lengths,
    QuoteMasks,
    Where,
)
from vllm_kimi_tools.enforcer.machine import Phase, RequestEnforcer
from vllm_kimi_tools.enforcer.vocab import tokenizer_special_ids
from vllm_kimi_tools.tools import DeclaredTool

pytest.importorskip("xgrammar")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

V = kt.VOCAB_SIZE
RESERVED = 163_700  # <|reserved_token_163700|>: a tiktoken special, not "added"
# Real tokens (ids in Moonshot's vocabulary) that open or close a string and
# write in the same step.
SPACE_QUOTE_DASHES = 22855  # b' "--'
EMPTY_STRING, SPACE_EMPTY = 2796, 4924  # b'""', b' ""'
CLOSE_OPEN_SLASH = 130756  # b'":"/'
CLOSE_OPEN = 7471  # b'":"'
NEXT_ITEM = 3923  # b'","'
CLOSE_NEXT_KEY = 64230  # b'",":'


def call_prefix(args: str) -> str:
    return (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"
        f"<|tool_call_argument_begin|>{args}"
    )


def at(store, tokenizer, schema: dict[str, Any], args: str) -> RequestEnforcer:
    enforcer = enforcer_for(store, {"f": schema})
    result = drive(enforcer, tokenizer, call_prefix(args))
    assert result.ok, result
    return enforcer


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props)}


# -- 1. every tokenizer special is special -----------------------------------


def test_the_real_vocabulary_pieces(real_grammar_store) -> None:
    table = real_grammar_store.table
    assert table.token_bytes[SPACE_QUOTE_DASHES] == b' "--'
    assert table.token_bytes[CLOSE_OPEN_SLASH] == b'":"/'
    assert table.token_bytes[CLOSE_NEXT_KEY] == b'",":'
    assert table.token_bytes[RESERVED] == b"<|reserved_token_163700|>"


def test_every_tiktoken_special_is_special(real_kimi_tokenizer, real_grammar_store):
    # What the tokenizer itself admits to: far fewer than it has.
    assert len(real_kimi_tokenizer.get_added_vocab()) < 32
    assert RESERVED not in real_kimi_tokenizer.all_special_ids
    specials = real_grammar_store.table.special_ids
    assert set(kt.SPECIAL_ID_RANGE) <= specials
    assert set(real_kimi_tokenizer.special_tokens.values()) <= specials
    assert not {i for i in specials if i < kt.NUM_BASE_TOKENS}


def test_a_reserved_token_is_masked_inside_an_argument_string(
    real_grammar_store, real_kimi_tokenizer
) -> None:
    enforcer = at(
        real_grammar_store,
        real_kimi_tokenizer,
        obj(city={"type": "string"}),
        '{"city": "O',
    )
    mask = allowed(enforcer, V)
    assert mask.sum() > 100_000  # a free string
    assert not mask[RESERVED] and not mask[kt.SPECIAL_TOKEN_IDS[kt.THINK_BEGIN]]
    # xgrammar reads it as the text "<|reserved_token_163700|>" and allows it:
    # only the special mask keeps it out.
    assert enforcer.refused_by(RESERVED) == ["special"]
    assert not enforcer.accept(RESERVED)


def test_the_call_header_offers_no_special(real_grammar_store, real_kimi_tokenizer):
    enforcer = enforcer_for(real_grammar_store, {"f": {"type": "object"}})
    assert drive(
        enforcer, real_kimi_tokenizer, "<|tool_calls_section_begin|><|tool_call_begin|>"
    ).ok
    offered = np.flatnonzero(allowed(enforcer, V))
    assert len(offered) and not set(offered) & real_grammar_store.table.special_ids


class _Tokenizer(SimpleNamespace):
    def __len__(self) -> int:
        return 10

    def get_added_vocab(self) -> dict[str, int]:
        return {"<a>": 6}


def test_tokenizer_special_ids_gathers_every_source() -> None:
    tok = _Tokenizer(all_special_ids=[5], special_tokens={"<b>": 7, "odd": "x"})
    # listed, added, tiktoken's mapping, and the padding past the tokenizer
    assert tokenizer_special_ids(tok, 12) == {5, 6, 7, 10, 11}
    assert set(kt.SPECIAL_ID_RANGE) <= tokenizer_special_ids(tok, V)  # Kimi-sized


# -- 3. tokens that open a string and write in one step ----------------------


def test_a_token_may_not_open_a_bounded_value_past_its_bounds(
    real_grammar_store, real_kimi_tokenizer
) -> None:
    enforcer = at(
        real_grammar_store,
        real_kimi_tokenizer,
        obj(s={"type": "string", "minLength": 1, "maxLength": 1}),
        '{"s":',
    )
    mask = allowed(enforcer, V)
    # ' "--' overshoots maxLength, '""' completes a too-short string; the
    # grammar alone would allow both.
    for token in (SPACE_QUOTE_DASHES, EMPTY_STRING, SPACE_EMPTY):
        assert not mask[token]
        assert enforcer.refused_by(token) == ["quotes"]
    quote = real_kimi_tokenizer.encode(' "', add_special_tokens=False)
    assert len(quote) == 1 and mask[quote[0]]
    # Where the bound leaves room, a token may open the string and write.
    roomy = obj(s={"type": "string", "minLength": 1, "maxLength": 2})
    enforcer = at(real_grammar_store, real_kimi_tokenizer, roomy, '{"s":')
    mask = allowed(enforcer, V)
    assert mask[SPACE_QUOTE_DASHES] and not mask[EMPTY_STRING]


def test_a_closing_token_may_not_write_into_the_next_string(
    real_grammar_store, real_kimi_tokenizer
) -> None:
    schema = obj(k={"type": "string", "maxLength": 0})
    enforcer = at(real_grammar_store, real_kimi_tokenizer, schema, '{"k')
    mask = allowed(enforcer, V)
    assert mask[CLOSE_OPEN] and not mask[CLOSE_OPEN_SLASH]
    assert enforcer.refused_by(CLOSE_OPEN_SLASH) == ["quotes"]
    # In an array of bounded strings, '","' closes one item and opens the
    # next with its last byte; '",":' would write ':' into the next item.
    items = {"type": "array", "items": {"type": "string", "maxLength": 3}}
    enforcer = at(real_grammar_store, real_kimi_tokenizer, obj(l=items), '{"l": ["a')
    mask = allowed(enforcer, V)
    assert mask[NEXT_ITEM] and not mask[CLOSE_NEXT_KEY]


@pytest.mark.parametrize(
    ("piece", "where", "ok"),
    [
        (b' "--', Where.VALUE_OBJ, False),
        (b' "', Where.VALUE_OBJ, True),
        (b'""', Where.VALUE_ARR, False),
        (b'"\xe3\x80\x81"', Where.VALUE_ARR, False),
        (b'{"a', Where.VALUE_ARR, True),  # the string is a key
        (b'":"', Where.IN_KEY, True),
        (b'":"a', Where.IN_KEY, False),
        (b'":{"a', Where.IN_KEY, True),
        (b'", "', Where.IN_VALUE_ARR, True),
        (b'", "ab', Where.IN_VALUE_ARR, False),
        (b'", "ab', Where.IN_VALUE_OBJ, True),  # a key follows
        (b'"}, {"a', Where.IN_VALUE_OBJ, True),
        (b'"}, "a', Where.IN_VALUE_OBJ, False),  # container unknown: a value
        (b'\\"a', Where.IN_VALUE_OBJ, True),  # an escaped quote closes nothing
        (b'\\"", "a', Where.IN_VALUE_ARR, False),
        (b'"', Where.ESCAPE_VALUE_OBJ, True),  # the escaped quote
        (b'"", "a', Where.ESCAPE_VALUE_ARR, False),
        (b'a"', Where.KEY, True),
        (b', "a', Where.AFTER_OBJ, True),
        (b', "a', Where.AFTER_ARR, False),
        (b'"x', Where.COLON, False),  # not JSON, and counted as a value
    ],
)
def test_quote_masks(piece: bytes, where: Where, ok: bool) -> None:
    tokens = [b"a", piece]
    masks = QuoteMasks(tokens)
    words = masks.words(where)
    assert bool(words[0] & 1)  # a token without a quote: always allowed
    assert bool(words[0] & 2) is ok


def test_length_masks_count_like_the_cursor() -> None:
    tokens = [b"", b"a", b'"', b"ab", b'a"', b"\\n", b'\\u0041"', b"\xc3", b"\xa9"]
    masks = LengthMasks(tokens)

    def bits(written: int, spans, escape_left: int = 0) -> list[int]:
        words = masks.words(written, Lengths(spans), escape_left)
        return [i for i in range(len(tokens)) if words[0] >> i & 1]

    # The empty token neither extends nor closes; '\\n' is one character;
    # a closing token with a \\u escape is never offered; a split character
    # counts at its lead byte.
    assert bits(0, ((1, 2),)) == [1, 3, 4, 5, 7, 8]
    assert bits(1, ((1, 2),)) == [1, 2, 4, 5, 7, 8]
    assert bits(2, ((1, 2),)) == [2, 8]
    # A union of lengths: closing only on an allowed one.
    assert bits(1, ((0, 0), (3, None))) == [1, 3, 5, 7, 8]
    # Inside an escape: only tokens that stay inside it.
    assert bits(1, ((1, 2),), escape_left=1) == [1, 2, 7, 8]


def test_the_cursor_counts_escapes_once() -> None:
    from vllm_kimi_tools.enforcer.lengths import JsonCursor

    for text, chars in [
        ('"a\\"b', 3),
        ('"\\u00e9', 1),
        ('"\\ud83d\\ude00', 1),  # a surrogate pair is one character
        ('"\\ude00\\ude00', 2),
        ('"h\xc3\xa9', 2),
    ]:
        cursor = JsonCursor()
        cursor.feed(text.encode("latin-1") if "\xc3" in text else text.encode())
        assert cursor.chars == chars, text
        assert len(json.loads(text + '"')) == chars or "\xc3" in text


def test_a_dead_end_falls_back_to_the_grammar(
    real_grammar_store, real_kimi_tokenizer
) -> None:
    """``pattern`` + ``maxLength``: 'aaa' fits the bound but the pattern needs
    a 'b'; the row falls back to the grammar's (counted) instead of being
    empty."""
    schema = obj(s={"type": "string", "pattern": "^a+b$", "maxLength": 3})
    enforcer = at(real_grammar_store, real_kimi_tokenizer, schema, '{"s": "aaa')
    assert enforcer.fallbacks == 0
    mask = allowed(enforcer, V)
    assert mask.any() and enforcer.fallbacks == 1
    assert enforcer.phase is Phase.ARGS


def test_an_empty_grammar_row_stops_the_enforcer(
    real_grammar_store, real_kimi_tokenizer
) -> None:
    enforcer = at(
        real_grammar_store, real_kimi_tokenizer, obj(s={"type": "string"}), '{"s": "'
    )

    class Nothing:
        def fill_next_token_bitmask(self, bitmask) -> None:
            bitmask.zero_()

    enforcer._matcher = Nothing()
    row = np.full((V + 31) // 32, -1, dtype=np.int32)
    assert enforcer.directive(row) is None
    assert enforcer.phase is Phase.OFF and enforcer.off_reason.startswith("empty")
    assert (row == -1).all()


# -- the property: no empty row, valid arguments ------------------------------

FORMATS = ["date", "date-time", "time", "email", "uuid", "ipv4", "uri"]


@st.composite
def bounds(draw) -> dict[str, int]:
    out: dict[str, int] = {}
    low = draw(st.integers(0, 4))
    if draw(st.booleans()):
        out["minLength"] = low
    if draw(st.booleans()) or not out:
        out["maxLength"] = low + draw(st.integers(0, 5))
    return out


@st.composite
def string_schema(draw, depth: int = 0) -> dict[str, Any]:
    kind = draw(st.sampled_from(["plain", "enum", "format", "anyOf", "array"]))
    if kind == "plain" or (depth and kind in ("anyOf", "array")):
        return {"type": "string", **draw(bounds())}
    if kind == "enum":
        # Quotes, backslashes and control characters need escapes.
        text = st.text('ab"é\\\n\x01', max_size=6)
        values = draw(st.lists(text, min_size=1, max_size=4, unique=True))
        typed = {"type": "string"} if draw(st.booleans()) else {}
        return {
            **typed,
            "enum": values,
            **(draw(bounds()) if draw(st.booleans()) else {}),
        }
    if kind == "format":
        fmt = {"type": "string", "format": draw(st.sampled_from(FORMATS))}
        return {**fmt, **(draw(bounds()) if draw(st.booleans()) else {})}
    if kind == "anyOf":
        other = st.sampled_from([{"type": "integer"}, {"type": "null"}])
        return {
            "anyOf": [
                draw(string_schema(depth + 1)),
                draw(st.one_of(string_schema(depth + 1), other)),
            ]
        }
    items = draw(string_schema(depth + 1))
    return {"type": "array", "items": items, "maxItems": 3}


@st.composite
def object_schema(draw) -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    props = {f"p{i}": draw(string_schema()) for i in range(n)}
    required = [k for k in props if draw(st.booleans())]
    return {"type": "object", "properties": props, "required": required}


def _is_structural(data: bytes) -> bool:
    return any(c in data for c in b'"{}[],:')


def test_random_schemas_never_leave_an_empty_row(real_grammar_store) -> None:
    """Seeded random walks over the real vocabulary: half the steps pick
    uniformly among allowed structural tokens (quotes, brackets, commas: the
    ones that open and close strings), half among all allowed tokens; the
    call end is taken when it is allowed, half the time."""
    store = real_grammar_store
    table = store.table
    structural = np.array([_is_structural(b) for b in table.token_bytes])
    call_end = table.markers.call_end
    stats = {"walks": 0, "finished": 0, "refused": 0, "fallbacks": 0}
    failures: list[str] = []

    @hypothesis.settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(schema=object_schema(), seed=st.integers(0, 2**32 - 1))
    def walk(schema: dict[str, Any], seed: int) -> None:
        try:
            spec, _ = build_spec([DeclaredTool("f", schema)], first_index=0)
        except ValueError as e:  # e.g. no enum value within the bounds
            assert "within minLength/maxLength" in str(e), e
            stats["refused"] += 1
            return
        validator = Draft202012Validator(schema)
        rng = random.Random(seed)
        for _ in range(2):
            enforcer = RequestEnforcer(spec, store)
            _to_arguments(enforcer, store)
            stats["walks"] += 1
            written = b""
            for _ in range(120):
                ok = allowed(enforcer, table.vocab_size)
                ids = np.flatnonzero(ok)
                assert len(ids), (schema, written)
                if ok[call_end] and rng.random() < 0.5:
                    token = call_end
                elif (
                    rng.random() < 0.5
                    and (pick := np.flatnonzero(ok & structural)).size
                ):
                    token = int(pick[rng.randrange(len(pick))])
                else:
                    token = int(ids[rng.randrange(len(ids))])
                assert enforcer.accept(token), enforcer.off_reason
                if token == call_end:
                    stats["finished"] += 1
                    errors = [
                        e.message for e in validator.iter_errors(json.loads(written))
                    ]
                    if errors:
                        failures.append(f"{json.dumps(schema)} {written!r} {errors}")
                    break
                written += table.token_bytes[token]
            stats["fallbacks"] += enforcer.fallbacks

    walk()
    assert not failures, failures[:5]
    assert stats["fallbacks"] == 0, stats
    # The walks prove something only if many of them end the call.
    assert stats["finished"] >= stats["walks"] // 2, stats


def _to_arguments(enforcer: RequestEnforcer, store) -> None:
    m = store.table.markers
    assert enforcer.accept(m.section_begin) and enforcer.accept(m.call_begin)
    header = b"functions.f:0"
    while enforcer._header != header:
        ids = store.table.continuations(enforcer._header, [header])
        assert enforcer.accept(max(ids, key=lambda i: len(store.table.token_bytes[i])))
    assert enforcer.accept(m.argument_begin)
