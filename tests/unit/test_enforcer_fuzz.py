# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""A schema fuzzer: random tool schemas, random token walks, the Enforcer core.

Schemas (hypothesis) nest objects, arrays, ``anyOf``/``oneOf``/``allOf``,
``$ref`` into ``$defs``, enums, consts, string length bounds, formats,
patterns, ``multipleOf``, numeric ranges and ``additionalProperties``.
Each one goes through admission (:func:`build_spec`): a refusal must be an
:class:`AdmissionError`, nothing else. An admitted one is walked, seeded,
token by token from the call's arguments: mostly a token the Enforcer
allows (biased towards the ones that open and close strings and the call
end), sometimes one it refuses. Properties:

* no exception escapes the machine, whatever is fed to it;
* no row is ever empty: every directive allows a token, or the Enforcer
  stood down (and says why);
* a refused token is refused by ``accept`` too (the Enforcer stands down);
* every finished call passes ``jsonschema`` against the schema as sent,
  unless the spec marks the tool loose or a length bound gave way (counted);
  and a length bound gives way only in a loose tool.

On a tiny synthetic vocabulary always (every byte, plus tokens that open,
close and write strings in one step), and on Moonshot's real 163,840-token
vocabulary when ``../shared`` has it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.admission import (
    AdmissionError,
    build_spec,
)
from vllm_kimi_tools.enforcer.machine import Ban, Fill, Only, Phase, RequestEnforcer
from vllm_kimi_tools.tools import DeclaredTool

xgr = pytest.importorskip("xgrammar")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
from jsonschema import Draft202012Validator  # noqa: E402

# -- schemas ---------------------------------------------------------------

NAMES = ["a", "b", "c", "d\u00e9", "k-1"]
KEYS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True)
FORMATS = ["date", "date-time", "email", "uuid", "ipv4", "uri"]
PATTERNS = ["^a+$", "^[a-c]*$", "^x", "b$", "^[0-9]{2,4}$"]
STRINGS = st.text('ab"\u00e9\\\n\x01x', max_size=5)
SCALARS = st.one_of(
    STRINGS, st.integers(-5, 5), st.sampled_from([0.5, 1.0, -2.25, True, False, None])
)


@st.composite
def string_schema(draw) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"} if draw(st.booleans()) else {}
    low = draw(st.integers(0, 4))
    if draw(st.booleans()):
        out["minLength"] = low
    if draw(st.booleans()):
        out["maxLength"] = low + draw(st.integers(0, 5))
    extra = draw(st.sampled_from(["", "", "enum", "const", "format", "pattern"]))
    if extra == "enum":
        out["enum"] = draw(st.lists(STRINGS, min_size=1, max_size=4, unique=True))
    elif extra == "const":
        out["const"] = draw(STRINGS)
    elif extra == "format":
        out["format"] = draw(st.sampled_from(FORMATS))
    elif extra == "pattern":
        out["pattern"] = draw(st.sampled_from(PATTERNS))
    out.setdefault("type", "string")
    return out


@st.composite
def number_schema(draw) -> dict[str, Any]:
    out: dict[str, Any] = {"type": draw(st.sampled_from(["integer", "number"]))}
    if draw(st.booleans()):
        out["minimum"] = draw(st.sampled_from([-3, 0, 0.5, 2]))
    if draw(st.booleans()):
        out["maximum"] = out.get("minimum", 0) + draw(st.sampled_from([0, 1, 7.5]))
    if draw(st.integers(0, 3)) == 0:
        out["multipleOf"] = draw(st.sampled_from([2, 3, 0.5, 0.0001, 0.25]))
    return out


def leaf() -> Any:
    return st.one_of(
        string_schema(),
        number_schema(),
        st.sampled_from(
            [
                {"type": "boolean"},
                {"type": "null"},
                {"type": ["string", "null"], "maxLength": 3},
                {},
                True,
            ]
        ),
        st.lists(SCALARS, min_size=1, max_size=4).map(
            lambda v: {"enum": list({json.dumps(x): x for x in v}.values())}
        ),
        SCALARS.map(lambda v: {"const": v}),
        st.just({"$ref": "#/$defs/s"}),
        st.just({"$ref": "#/$defs/node"}),
    )


def extend(children: Any) -> Any:
    @st.composite
    def obj(draw) -> dict[str, Any]:
        names = draw(KEYS)
        props = {n: draw(children) for n in names}
        out: dict[str, Any] = {"type": "object", "properties": props}
        required = [n for n in names if draw(st.booleans())]
        if required:
            out["required"] = required
        extra = draw(st.sampled_from([None, None, True, False, {"type": "integer"}]))
        if extra is not None:
            out["additionalProperties"] = extra
        return out

    @st.composite
    def arr(draw) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "array"}
        if draw(st.integers(0, 3)) == 0:
            out["prefixItems"] = [draw(children)]
        if draw(st.integers(0, 4)):
            out["items"] = draw(children)
        low = draw(st.integers(0, 2))
        if low:
            out["minItems"] = low
        out["maxItems"] = low + draw(st.integers(0, 2))
        return out

    @st.composite
    def composed(draw) -> dict[str, Any]:
        key = draw(st.sampled_from(["anyOf", "anyOf", "oneOf", "allOf"]))
        branches = draw(st.lists(children, min_size=1, max_size=3))
        out: dict[str, Any] = {key: branches}
        if draw(st.integers(0, 2)) == 0:  # a keyword beside the composition
            out.update(draw(st.sampled_from([{"type": "string"}, {"maxLength": 4}])))
        return out

    return st.one_of(obj(), arr(), composed())


VALUE = st.recursive(leaf(), extend, max_leaves=8)


@st.composite
def tool_schema(draw) -> dict[str, Any]:
    names = draw(KEYS)
    props = {n: draw(VALUE) for n in names}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "required": [n for n in names if draw(st.booleans())],
        "$defs": {
            "s": draw(string_schema()),
            # Recursive with a base case: a tree of small strings.
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "string", "maxLength": 2},
                    "kids": {
                        "type": "array",
                        "items": {"$ref": "#/$defs/node"},
                        "maxItems": 2,
                    },
                },
                "required": ["v"],
            },
        },
    }
    if draw(st.booleans()):
        schema["additionalProperties"] = draw(st.sampled_from([True, False]))
    return schema


# -- vocabularies --------------------------------------------------------------


def tiny_store():
    """A GrammarStore over ~330 tokens: every byte, the Kimi markers, and
    pieces that open, close and write strings in one step."""
    from vllm_kimi_tools.enforcer.grammars import GrammarStore
    from vllm_kimi_tools.enforcer.vocab import TokenTable

    pieces = [bytes([b]) for b in range(256)]
    pieces += [
        s.encode()
        for s in [
            '"',
            '":"',
            '", "',
            '","',
            ' "--',
            '""',
            ' ""',
            '{"',
            '"}',
            '"]',
            "],",
            '":',
            '": "',
            "true",
            "false",
            "null",
            "12",
            "0.5",
            "e5",
            "\\u00e9",
            "\\n",
            '\\"',
            "ab",
            "aaa",
            "2024-01-01",
            "T12:00:00Z",
            "@x.io",
            "functions",
            ".",
            ":",
            "   ",
            "\u00e9".encode().decode(),
        ]
    ]
    pieces = list(dict.fromkeys(pieces))
    names = [
        kt.TOOL_CALLS_SECTION_BEGIN,
        kt.TOOL_CALLS_SECTION_END,
        kt.TOOL_CALL_BEGIN,
        kt.TOOL_CALL_ARGUMENT_BEGIN,
        kt.TOOL_CALL_END,
        kt.THINK_BEGIN,
        kt.THINK_END,
        kt.IM_END,
        "[EOS]",
        kt.IM_USER,
        kt.IM_ASSISTANT,
        kt.IM_SYSTEM,
        kt.IM_MIDDLE,
    ]
    vocab = {p.decode("latin-1"): i for i, p in enumerate(pieces)}
    specials = {}
    for name in names:
        specials[name] = len(pieces)
        pieces.append(name.encode())
    vocab.update(specials)
    size = (len(pieces) + 31) // 32 * 32
    pieces += [b""] * (size - len(pieces))
    info = xgr.TokenizerInfo(
        pieces, xgr.VocabType.RAW, vocab_size=size, stop_token_ids=[specials[kt.IM_END]]
    )
    table = TokenTable.build(pieces, vocab, set(specials.values()))
    return GrammarStore(table, info, threads=1, wait_s=60)


@pytest.fixture(scope="module")
def tiny():
    store = tiny_store()
    yield store
    store.shutdown()


# -- the walk ------------------------------------------------------------------


@dataclass
class Stats:
    admitted: int = 0
    refused: int = 0
    walks: int = 0
    finished: int = 0
    checked: int = 0  # finished calls of exact tools, validated
    loose: int = 0
    degraded: int = 0
    stood_down: int = 0
    bad_tokens: int = 0
    failures: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def allowed_row(enforcer: RequestEnforcer, vocab: int) -> np.ndarray | None:
    """Boolean allowed ids, or None when the Enforcer stood down."""
    row = np.full((vocab + 31) // 32, -1, dtype=np.int32)
    directive = enforcer.directive(row)
    if directive is None:
        assert enforcer.phase is Phase.OFF and enforcer.off_reason, "no directive"
        assert (row == -1).all(), "a stood-down row must be left whole"
        return None
    if isinstance(directive, Ban):
        out = np.ones(vocab, dtype=bool)
        out[list(directive.ids)] = False
        return out
    if isinstance(directive, Only):
        out = np.zeros(vocab, dtype=bool)
        out[list(directive.ids)] = True
        return out
    assert isinstance(directive, Fill)
    return np.unpackbits(row.view(np.uint8), bitorder="little").astype(bool)[:vocab]


def to_arguments(enforcer: RequestEnforcer, store) -> None:
    m = store.table.markers
    assert enforcer.accept(m.section_begin) and enforcer.accept(m.call_begin)
    header = b"functions.f:0"
    while enforcer._header != header:
        ids = store.table.continuations(enforcer._header, [header])
        assert enforcer.accept(max(ids, key=lambda i: len(store.table.token_bytes[i])))
    assert enforcer.accept(m.argument_begin)


def walk_one(store, schema: dict[str, Any], seed: int, stats: Stats, steps: int):
    try:
        spec, _ = build_spec(
            [DeclaredTool("f", schema)], first_index=0, choice="required"
        )
    except AdmissionError as e:
        stats.refused += 1
        stats.reasons.append(str(e))
        return
    stats.admitted += 1
    tool = spec.tools[0]
    stats.loose += not tool.exact
    validator = Draft202012Validator(schema)
    table = store.table
    vocab = table.vocab_size
    structural = _structural(table)
    call_end = table.markers.call_end
    rng = random.Random(seed)
    enforcer = RequestEnforcer(spec, store)
    to_arguments(enforcer, store)
    stats.walks += 1
    written = b""
    for _ in range(steps):
        ok = allowed_row(enforcer, vocab)
        if ok is None:
            stats.stood_down += 1
            return
        ids = np.flatnonzero(ok)
        assert len(ids), f"an empty row: {json.dumps(schema)} {written!r}"
        if seed % 2 and rng.random() < 0.02:
            # A token the Enforcer refuses: accept() refuses it too and the
            # Enforcer stands down; nothing escapes.
            bad = np.flatnonzero(~ok)
            if len(bad):
                token = int(bad[rng.randrange(len(bad))])
                assert not enforcer.accept(token)
                assert enforcer.phase is Phase.OFF
                stats.bad_tokens += 1
                return
        if ok[call_end] and rng.random() < 0.5:
            token = call_end
        elif rng.random() < 0.5 and (pick := np.flatnonzero(ok & structural)).size:
            token = int(pick[rng.randrange(len(pick))])
        else:
            token = int(ids[rng.randrange(len(ids))])
        assert enforcer.accept(token), enforcer.off_reason
        if token == call_end:
            break
        written += table.token_bytes[token]
    else:
        return
    stats.finished += 1
    degraded = enforcer.fallbacks > 0
    stats.degraded += degraded
    if degraded and tool.exact:
        stats.failures.append(f"a bound gave way, exact tool: {json.dumps(schema)}")
    if degraded or not tool.exact:
        return
    stats.checked += 1
    errors = [e.message for e in validator.iter_errors(json.loads(written))]
    if errors:
        stats.failures.append(f"{json.dumps(schema)}\n  {written!r}\n  {errors[:3]}")


_STRUCTURAL: dict[int, np.ndarray] = {}


def _structural(table) -> np.ndarray:
    key = id(table)
    if key not in _STRUCTURAL:
        _STRUCTURAL[key] = np.array(
            [any(c in b for c in b'"{}[],:') for b in table.token_bytes]
        )
    return _STRUCTURAL[key]


def fuzz(store, examples: int, steps: int) -> Stats:
    stats = Stats()

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(schema=tool_schema(), seed=st.integers(0, 2**32 - 1))
    def run(schema: dict[str, Any], seed: int) -> None:
        for i in range(2):
            walk_one(store, schema, seed + i, stats, steps)

    run()
    return stats


def check(stats: Stats) -> None:
    assert not stats.failures, "\n".join(stats.failures[:5])
    # The run proves something only if it admits, finishes and checks calls.
    assert stats.admitted >= stats.refused, stats
    assert stats.finished >= stats.walks // 3, stats
    assert stats.checked >= stats.finished // 3, stats
    assert stats.bad_tokens > 0, stats


def test_fuzz_tiny_vocabulary(tiny) -> None:
    check(fuzz(tiny, examples=400, steps=160))


def test_fuzz_real_vocabulary(real_grammar_store) -> None:
    check(fuzz(real_grammar_store, examples=200, steps=90))
