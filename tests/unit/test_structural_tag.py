# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer's rules as a structural tag (for speculative decoding):
compiled by xgrammar on Moonshot's real tokenizer (and on the tiny one, so
the suite runs without ``../shared``), it accepts and refuses the outputs
the Enforcer does, token by token; where it cannot follow the Enforcer, the
test says so."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from kimi_testbed.conversations import WEATHER_ROUND_TRIP
from tests.enforcer_kit import allowed, enforcer_for
from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.admission import build_spec
from vllm_kimi_tools.enforcer.prompt import OutputStart
from vllm_kimi_tools.enforcer.spec import EnforcerSpec, ToolGrammar
from vllm_kimi_tools.enforcer.structural_tag import (
    MAX_TAG_NESTING,
    TagOptions,
    TagTooDeepError,
    nesting,
    spec_structural_tag,
    structural_tag_json,
)
from vllm_kimi_tools.tools import DeclaredTool

xgr = pytest.importorskip("xgrammar")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city"],
}
SEARCH = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
TOOLS = {"get_weather": WEATHER, "search": SEARCH}
SB, SE = kt.TOOL_CALLS_SECTION_BEGIN, kt.TOOL_CALLS_SECTION_END
CB, AB, CE = kt.TOOL_CALL_BEGIN, kt.TOOL_CALL_ARGUMENT_BEGIN, kt.TOOL_CALL_END
TB, TE = kt.THINK_BEGIN, kt.THINK_END


def call(name: str, idx: int, args: str) -> str:
    return f"{CB}functions.{name}:{idx}{AB}{args}{CE}"


def section(*calls: str) -> str:
    return SB + "".join(calls) + SE


OSLO = call("get_weather", 0, '{"city": "Oslo"}')
FIND = call("search", 1, '{"q": "rain"}')


class Kimi:
    """A tokenizer, its xgrammar compiler and its grammar store."""

    def __init__(self, tokenizer: Any, vocab_size: int, store: Any) -> None:
        self.tokenizer, self.vocab_size, self.store = tokenizer, vocab_size, store
        self.vocab = tokenizer.get_vocab()
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        self.stops = [self.vocab[kt.IM_END], self.vocab["[EOS]"]]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def spec(self, tools: dict[str, Any] | None = None, **kw: Any):
        tools = TOOLS if tools is None else tools
        spec_kw = {"first_index": 0, **kw}
        return build_spec([DeclaredTool(n, p) for n, p in tools.items()], **spec_kw)[0]

    def matcher(self, spec, **options: Any):
        text = structural_tag_json(
            spec, vocab=self.vocab, options=TagOptions(**options)
        )
        grammar = self.compiler.compile_structural_tag(text)
        return xgr.GrammarMatcher(grammar, override_stop_tokens=self.stops)

    def mask(self, matcher) -> np.ndarray:
        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        matcher.fill_next_token_bitmask(bitmask)
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)

    def id(self, text: str) -> int:
        return self.vocab[text]


def tag_accepts(kimi: Kimi, matcher, text: str, *, end: bool = True) -> bool:
    for token in kimi.encode(text):
        if not matcher.accept_token(token):
            return False
    return not end or matcher.accept_token(kimi.stops[0])


def enforcer_accepts(kimi: Kimi, text: str, start: OutputStart, **kw: Any) -> bool:
    enforcer = enforcer_for(kimi.store, TOOLS, start=start, **kw)
    for token in [*kimi.encode(text), kimi.stops[0]]:
        if not allowed(enforcer, kimi.vocab_size)[token]:
            return False
        enforcer.accept(token)
    return True


@pytest.fixture(scope="module", params=["real", "tiny"])
def kimi(request) -> Kimi:
    if request.param == "real":
        tokenizer = request.getfixturevalue("real_kimi_tokenizer")
        return Kimi(
            tokenizer, kt.VOCAB_SIZE, request.getfixturevalue("real_grammar_store")
        )
    tokenizer = request.getfixturevalue("tiny_tokenizer")
    return Kimi(tokenizer, len(tokenizer), request.getfixturevalue("tiny_store"))


# (spec keywords, output, accepted): the Enforcer's rules, output starting
# in free text (K2, K2-Thinking: OutputStart.TEXT).
CASES = [
    ({}, "Just text.", True),
    ({}, "Let me look." + section(OSLO), True),
    ({}, section(OSLO, FIND), True),
    ({}, f"{TB}hmm{TE}ok" + section(OSLO), True),
    ({}, f"{TB}hmm" + section(OSLO), True),  # K2-Thinking: no </think>
    ({}, "ok" + OSLO, True),  # a bare call opens an implicit section
    ({}, OSLO + SE, True),
    ({}, section(call("get_weather", 1, '{"city": "Oslo"}')), False),  # index
    ({}, section(OSLO, call("search", 0, '{"q": "rain"}')), False),
    ({}, section(call("nope", 0, "{}")), False),  # undeclared
    ({}, section(call("get_weather", 0, '{"city": "Oslo", "x": 1}')), False),
    ({}, section(call("get_weather", 0, '{"city": "Oslo", "days": 9}')), False),
    ({}, section(call("get_weather", 0, '{"days": 2}')), False),  # required key
    ({}, section(call("get_weather", 0, f'{{"city": "Os{CE}lo"}}')), False),
    ({}, section(OSLO) + "and more", False),  # text after the calls
    ({}, "text" + CE, False),  # stray markup
    ({}, "text" + SE, False),
    ({}, SB + SE, False),  # empty section
    ({}, f"a{TE}b", False),  # </think> outside thinking
    ({}, f"a{TB}b", False),  # <think> past the first token
    ({}, f"{TB}a{TE}b{TE}", False),
    ({"first_index": 3}, section(call("get_weather", 3, '{"city": "Oslo"}')), True),
    ({"first_index": 3}, section(OSLO), False),
    ({"parallel": False}, section(OSLO), True),
    ({"parallel": False}, section(OSLO, FIND), False),
    ({"choice": "required"}, section(OSLO), True),
    ({"choice": "required"}, f"{TB}hmm{TE}" + section(OSLO), True),
    ({"choice": "required"}, f"{TB}hmm" + OSLO, True),
    ({"choice": "required"}, "Sure." + section(OSLO), False),
    ({"choice": "required"}, "Sure.", False),
    ({"choice": "required"}, f"{TB}hmm", False),  # no end of turn in thought
    ({"choice": "required"}, section(OSLO, FIND), False),
    ({"named": "search"}, section(call("search", 0, '{"q": "x"}')), True),
    ({"named": "search"}, section(OSLO), False),
    ({"reply": {"type": "object"}}, '{"a": 1}', True),
    ({"reply": {"type": "object"}}, section(OSLO), True),
    ({"reply": {"type": "object"}}, "plain text", False),
    ({"reply": {"type": "object"}}, '{"a": 1}' + section(OSLO), False),
]


@pytest.mark.parametrize(("kw", "text", "accepted"), CASES)
def test_the_tag_accepts_what_the_enforcer_accepts(kimi, kw, text, accepted) -> None:
    matcher = kimi.matcher(kimi.spec(**kw), start=OutputStart.TEXT)
    assert tag_accepts(kimi, matcher, text) is accepted
    assert enforcer_accepts(kimi, text, OutputStart.TEXT, **kw) is accepted


@pytest.mark.parametrize(
    ("start", "text", "accepted"),
    [
        (OutputStart.THINKING, f"thinking{TE}answer", True),  # K2.5, thinking on
        (OutputStart.THINKING, "thinking" + section(OSLO), True),
        (OutputStart.THINKING, f"{TB}x", False),
        (OutputStart.THOUGHT, "answer" + section(OSLO), True),  # K2.5, off
        (OutputStart.THOUGHT, f"{TE}answer", False),
        (OutputStart.THOUGHT, f"{TB}x{TE}", False),
    ],
)
def test_every_start_the_prompt_sets(kimi, start, text, accepted) -> None:
    matcher = kimi.matcher(kimi.spec(), start=start)
    assert tag_accepts(kimi, matcher, text) is accepted
    assert enforcer_accepts(kimi, text, start) is accepted


def test_an_unknown_start_takes_every_start(kimi) -> None:
    """What vLLM's path gives without a reasoning parser: the prompt is not
    known, so under "auto" the tag takes each start's outputs (looser than
    the Enforcer, which knows it: "a</think>b" on K2)."""
    for text in ("answer", f"{TB}a{TE}b", f"a{TE}b", "a" + section(OSLO)):
        assert tag_accepts(kimi, kimi.matcher(kimi.spec()), text), text
    assert not tag_accepts(kimi, kimi.matcher(kimi.spec()), f"a{TE}b{TE}")
    forced = kimi.spec(choice="required")
    # Forced: as on K2 (no text before the section but a <think>...).
    assert tag_accepts(kimi, kimi.matcher(forced), f"{TB}a{TE}" + section(OSLO))
    assert not tag_accepts(kimi, kimi.matcher(forced), f"a{TE}" + section(OSLO))
    assert not tag_accepts(kimi, kimi.matcher(forced), "a" + section(OSLO))


def test_markers_are_single_tokens_and_their_text_is_text(kimi) -> None:
    spelled = kimi.encode("<") + kimi.encode("|tool_calls_section_begin|>")
    assert len(spelled) > 1
    forced = kimi.matcher(kimi.spec(choice="required"), start=OutputStart.THOUGHT)
    assert np.flatnonzero(kimi.mask(forced)).tolist() == [kimi.id(SB)]
    assert not forced.accept_token(spelled[0])
    # In free text the spelled-out marker is text, and opens no section.
    free = kimi.matcher(kimi.spec(), start=OutputStart.THOUGHT)
    assert all(free.accept_token(t) for t in spelled)
    assert all(free.accept_token(t) for t in kimi.encode("functions.search:0"))
    assert not kimi.mask(free)[kimi.id(AB)]


def test_after_the_section_only_the_turn_ends(kimi) -> None:
    matcher = kimi.matcher(kimi.spec())
    assert tag_accepts(kimi, matcher, section(OSLO), end=False)
    assert set(np.flatnonzero(kimi.mask(matcher))) == set(kimi.stops)


def test_no_marker_text_inside_an_argument_string(kimi) -> None:
    matcher = kimi.matcher(kimi.spec())
    header = SB + CB + "functions.get_weather:0" + AB
    assert tag_accepts(kimi, matcher, header + '{"city": "O', end=False)
    mask = kimi.mask(matcher)
    assert mask.sum() > 0.4 * kimi.vocab_size  # a free string
    barred = (*kt.REQUIRED_TOOL_TOKENS, kt.IM_END, kt.IM_USER, kt.IM_MIDDLE)
    assert not any(mask[kimi.id(t)] for t in barred)
    # Where a grammar cannot follow the Enforcer (which clears every special
    # id and allows any text): specials whose text does not start "<|" stay
    # allowed, and the text "<|" spelled out is barred.
    assert mask[kimi.id(TB)]
    if kimi.vocab_size == kt.VOCAB_SIZE:
        assert mask[kimi.id("[BOS]")]
    spelled = kimi.matcher(kimi.spec())
    assert not tag_accepts(kimi, spelled, section(call("search", 0, '{"q": "a<|b"}')))
    assert enforcer_accepts(
        kimi, section(call("search", 0, '{"q": "a<|b"}')), OutputStart.TEXT
    )


def test_calls_past_the_pinned_ones_take_any_canonical_index(kimi) -> None:
    spec = kimi.spec()
    calls = [OSLO, FIND, call("search", 7, '{"q": "x"}')]
    assert tag_accepts(kimi, kimi.matcher(spec, pinned_calls=2), section(*calls))
    assert not tag_accepts(kimi, kimi.matcher(spec, pinned_calls=3), section(*calls))
    odd = [OSLO, FIND, call("search", 0, '{"q": "x"}').replace(":0", ":07")]
    assert not tag_accepts(kimi, kimi.matcher(spec, pinned_calls=2), section(*odd))


def test_no_tool_left_to_call_opens_no_section(kimi) -> None:
    spec = kimi.spec(max_tokens=4)  # no call fits: no tool is offered
    assert spec.tools == ()
    assert tag_accepts(kimi, kimi.matcher(spec), "only text")
    assert not tag_accepts(kimi, kimi.matcher(spec), section(OSLO))
    assert not tag_accepts(kimi, kimi.matcher(spec), OSLO)


def test_a_slot_reuses_the_argument_grammars(kimi) -> None:
    """xgrammar builds each tool's grammar once however many call slots hold
    it: a slot adds less memory than two tools' grammars (it would add all
    five if each slot had its own)."""
    tools = {f"tool_{i}": {**WEATHER, "title": f"t{i}"} for i in range(5)}

    def size(names: list[str], pinned: int) -> int:
        spec = kimi.spec({name: tools[name] for name in names})
        text = structural_tag_json(
            spec, vocab=kimi.vocab, options=TagOptions(pinned_calls=pinned)
        )
        return kimi.compiler.compile_structural_tag(text).memory_size_bytes

    names = list(tools)
    per_tool = (size(names, 1) - size(names[:1], 1)) / 4
    per_slot = (size(names, 8) - size(names, 1)) / 7
    assert 0 < per_slot < 2 * per_tool


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"k": schema}, "required": ["k"]}
    return schema


def test_deep_schemas_pin_fewer_calls_to_stay_within_vllms_bound() -> None:
    spec = build_spec([DeclaredTool("f", _deep(30))], first_index=0)[0]
    full = spec_structural_tag(spec, options=TagOptions(max_nesting=10_000))
    fitted = spec_structural_tag(spec)
    assert nesting(full.model_dump()) > MAX_TAG_NESTING >= nesting(fitted.model_dump())
    assert "functions.f:3" in json.dumps(full.model_dump())  # 4 pinned
    text = json.dumps(fitted.model_dump())
    assert "functions.f:0" in text and "functions.f:3" not in text


def test_every_admitted_schema_fits_in_a_tag() -> None:
    """Admission takes schemas up to 64 containers deep; a tag pinning one
    call fits them in vLLM's bound, whatever the tool choice."""
    deepest = build_spec([DeclaredTool("f", _deep(31))], first_index=0)[0]
    assert nesting(json.loads(deepest.tools[0].grammar)) >= 60
    for kw in ({}, {"choice": "required"}, {"reply": {"type": "object"}}):
        spec = build_spec([DeclaredTool("f", _deep(31))], first_index=0, **kw)[0]
        for start in (None, *OutputStart):
            tag = spec_structural_tag(spec, options=TagOptions(start=start))
            assert nesting(tag.model_dump()) <= MAX_TAG_NESTING
    forged = EnforcerSpec(tools=(ToolGrammar("f", json.dumps(_deep(40))),))
    with pytest.raises(TagTooDeepError):
        spec_structural_tag(forged)


def test_a_forced_call_needs_a_tool() -> None:
    with pytest.raises(ValueError, match="no tool"):
        spec_structural_tag(EnforcerSpec(tools=(), choice="required"))


# -- through vLLM's parser composition ----------------------------------------


def test_the_parser_offers_the_tag_only_under_speculation_and_opt_in(
    monkeypatch,
) -> None:
    pytest.importorskip("vllm")
    from unittest.mock import MagicMock

    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest,
    )
    from vllm.parser.parser_manager import ParserManager

    from vllm_kimi_tools import envs, register
    from vllm_kimi_tools.chat import hook
    from vllm_kimi_tools.enforcer.spec import SPEC_KEY

    register()
    tokenizer = MagicMock()
    tokenizer.get_vocab.return_value = dict(kt.SPECIAL_TOKEN_IDS)
    parser_cls = ParserManager.get_parser(
        tool_parser_name="kimi_k2_robust", enable_auto_tools=True, tokenizer=tokenizer
    )
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER},
    }
    history = [*WEATHER_ROUND_TRIP, {"role": "user", "content": "and Oslo?"}]

    def served(**kw: Any) -> Any:
        body = {"model": "m", "messages": history, "tools": [tool], **kw}
        request = ChatCompletionRequest(**body)
        return parser_cls(tokenizer, request.tools).adjust_request(request)

    def tag_of(request: Any) -> dict[str, Any] | None:
        so = request.structured_outputs
        return None if so is None else json.loads(so.structural_tag)

    assert envs.KIMI_TOOLS_SPECULATIVE_TAG is False
    monkeypatch.setattr(hook, "_unavailable", None)
    monkeypatch.setattr(hook, "_after_thinking", False)
    hook.note_config(SimpleNamespace(speculative_config=object()))
    stock_auto, stock_required = served(), served(tool_choice="required")
    assert tag_of(stock_auto) is None  # stock default: no tag for "auto"
    assert "token_dispatch" not in json.dumps(tag_of(stock_required))

    monkeypatch.setenv("KIMI_TOOLS_SPECULATIVE_TAG", "1")
    auto, required = served(), served(tool_choice="required")
    assert SPEC_KEY not in (auto.vllm_xargs or {})  # the Enforcer cannot run
    text = json.dumps(tag_of(auto))
    assert "token_dispatch" in text and "functions.get_weather:1" in text
    assert "functions.get_weather:0" not in text  # the history took index 0
    assert "functions.get_weather:1" in json.dumps(tag_of(required))
    assert tag_of(required) != tag_of(stock_required)
    # A request that opted out of the Enforcer gets vLLM's own tag.
    out = served(tool_choice="required", vllm_xargs={"kimi_tools_enforce": False})
    assert "token_dispatch" not in json.dumps(tag_of(out))
    # A reasoning parser holds the grammar back until the thinking ends:
    # the tag then allows no think marker at all.
    hook.note_config(
        SimpleNamespace(
            speculative_config=object(),
            structured_outputs_config=SimpleNamespace(
                reasoning_parser="kimi_k2", enable_in_reasoning=False
            ),
        )
    )
    assert tag_of(auto)["format"]["type"] == "sequence"  # an optional <think>
    assert tag_of(served())["format"]["type"] == "token_dispatch"  # text at once
    # Without speculative decoding the setting changes nothing.
    monkeypatch.setattr(hook, "_unavailable", None)
    assert tag_of(served()) is None and SPEC_KEY in served().vllm_xargs
