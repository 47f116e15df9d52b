# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""kimi_k2_robust through vLLM's own parser composition (no engine)."""

from __future__ import annotations

import json
import random
import sys
from importlib.metadata import entry_points
from typing import Any
from unittest.mock import MagicMock

import pytest

pytest.importorskip("vllm")

from tests.kimi_text import (  # noqa: E402
    ARG,
    CALL,
    END,
    SEC,
    WEATHER_TOOL,
    call,
    section,
    token_deltas,
)
from vllm_kimi_tools import metrics, register, tokens  # noqa: E402

HISTORY = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "get_weather:0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "A"}'},
            },
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "B"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "get_weather:0", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    {"role": "user", "content": "and Tokyo?"},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = MagicMock()
    tok.get_vocab.return_value = dict(tokens.SPECIAL_TOKEN_IDS)
    return tok


@pytest.fixture(scope="module")
def parser_cls(tokenizer: Any) -> Any:
    from vllm.parser.parser_manager import ParserManager

    register()
    return ParserManager.get_parser(
        tool_parser_name="kimi_k2_robust",
        enable_auto_tools=True,
        tokenizer=tokenizer,
    )


def _request(**kw: Any) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest,
    )

    body = {"model": "m", "messages": HISTORY, "tools": [WEATHER_TOOL], **kw}
    return ChatCompletionRequest(**body)


def _parse(parser_cls: Any, tokenizer: Any, text: str, **kw: Any):
    request = _request(**kw)
    parser = parser_cls(tokenizer, request.tools)
    return parser.parse(text, request, enable_auto_tools=True)


def _stream(parser_cls: Any, tokenizer: Any, text: str, sizes: list[int], **kw):
    """Feed deltas the way the serving layer does; rebuild the message."""
    request = _request(**kw)
    parser = parser_cls(tokenizer, request.tools)
    content, calls = "", {}
    pieces, pos = [], 0
    for size in sizes:
        pieces.append(text[pos : pos + size])
        pos += size
    pieces.append(text[pos:])
    last_index = -1
    for i, piece in enumerate(pieces):
        delta = parser.parse_delta(
            piece, [], request, prompt_token_ids=[], finished=i == len(pieces) - 1
        )
        if delta is None:
            continue
        content += delta.content or ""
        for tc in delta.tool_calls:
            assert tc.index >= last_index, "indices must be monotonic"
            last_index = tc.index
            assert tc.index not in calls, "id and name are sent once per call"
            calls[tc.index] = (tc.id, tc.function.name, tc.function.arguments)
    return content, [calls[i] for i in sorted(calls)]


def test_entry_point_registers_parser() -> None:
    from vllm.tool_parsers import ToolParserManager

    (ep,) = [
        e
        for e in entry_points(group="vllm.general_plugins")
        if e.value == "vllm_kimi_tools:register"
    ]
    ep.load()()
    ep.load()()  # idempotent
    cls = ToolParserManager.get_tool_parser("kimi_k2_robust")
    assert cls.__name__ == "KimiK2RobustToolParser"
    # The stock parser is untouched.
    stock = ToolParserManager.get_tool_parser("kimi_k2")
    assert stock.__module__.startswith("vllm.")


def test_tokenizer_without_kimi_tokens_fails_at_startup() -> None:
    from vllm.parser.parser_manager import ParserManager

    register()
    plain = MagicMock()
    plain.get_vocab.return_value = {"a": 0}
    with pytest.raises(TypeError, match="tool_calls_section_begin"):
        ParserManager.get_parser(
            tool_parser_name="kimi_k2_robust", enable_auto_tools=True, tokenizer=plain
        )


def test_non_streaming_canonical_ids_continue_history(parser_cls, tokenizer) -> None:
    text = "On it." + section(
        call("get_weather:2", {"city": "Tokyo"}), call("call_x", {"city": "Oslo"})
    )
    reasoning, content, calls = _parse(parser_cls, tokenizer, text)
    assert content == "On it."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("functions.get_weather:2", "get_weather", {"city": "Tokyo"}),
        ("functions.get_weather:3", "get_weather", {"city": "Oslo"}),
    ]


def test_no_complete_call_returns_clean_content(parser_cls, tokenizer) -> None:
    before = metrics.dropped_counts().get("truncated", 0)
    text = "Checking." + SEC + CALL + "functions.get_weather:2" + ARG + '{"ci'
    _, content, calls = _parse(parser_cls, tokenizer, text)
    assert content == "Checking."
    assert not calls
    assert metrics.dropped_counts()["truncated"] == before + 1


def test_undeclared_call_is_dropped_and_counted(parser_cls, tokenizer) -> None:
    before = metrics.dropped_counts().get("undeclared_tool", 0)
    text = section(call("functions.delete_file:0", {"path": "/etc/passwd"}))
    _, content, calls = _parse(parser_cls, tokenizer, text)
    assert not calls
    assert not content
    assert metrics.dropped_counts()["undeclared_tool"] == before + 1


@pytest.mark.parametrize(
    "text",
    [
        "Sure." + section(call("get_weather:9", {"city": "Tokyo"})) + "Done.",
        CALL + "functions_get_weather_0" + ARG + '{"city": "x"}' + END,
        SEC + CALL + "functions.get_weather:0" + ARG + '{"city": "a' + END + 'b"}',
        "no calls at all <|tool",
        "x" + SEC + CALL + "functions.get_weather:0" + ARG + '{"ci',
    ],
)
def test_streaming_equals_non_streaming(parser_cls, tokenizer, text) -> None:
    _, content, calls = _parse(parser_cls, tokenizer, text)
    expected = (content or "", [(c.id, c.name, c.arguments) for c in calls or []])
    rng = random.Random(7)
    for cut in range(len(text) + 1):
        assert _stream(parser_cls, tokenizer, text, [cut]) == expected
    for _ in range(20):
        sizes = [rng.randint(0, 6) for _ in range(len(text))]
        assert _stream(parser_cls, tokenizer, text, sizes) == expected


def test_tool_choice_none_strips_markup(parser_cls, tokenizer) -> None:
    text = "Hi" + section(call("functions.get_weather:0", {"city": "x"}))
    _, content, calls = _parse(parser_cls, tokenizer, text, tool_choice="none")
    assert not calls
    assert content == "Hi"


def test_adjust_request_keeps_special_tokens(parser_cls, tokenizer) -> None:
    request = _request()
    parser = parser_cls(tokenizer, request.tools)
    assert parser.adjust_request(request).skip_special_tokens is False
    # Default flags, tool_choice auto: no grammar from the stock strict mode.
    assert request.structured_outputs is None


def test_where_the_enforcer_cannot_run_the_request_is_constrained_as_stock(
    parser_cls, tokenizer, monkeypatch
) -> None:
    """Speculative decoding (vLLM loads no logits processor): no spec, and
    vLLM's own structural tag for tool_choice "required", as stock kimi_k2
    gives it, never less; counted per request."""
    from types import SimpleNamespace

    from vllm.parser.parser_manager import ParserManager

    from vllm_kimi_tools import metrics
    from vllm_kimi_tools.chat import hook
    from vllm_kimi_tools.enforcer.spec import SPEC_KEY

    stock_cls = ParserManager.get_parser(
        tool_parser_name="kimi_k2", enable_auto_tools=True, tokenizer=tokenizer
    )
    stock = stock_cls(tokenizer, [WEATHER_TOOL]).adjust_request(
        _request(tool_choice="required")
    )
    assert stock.structured_outputs.structural_tag

    enforced = parser_cls(tokenizer, [WEATHER_TOOL]).adjust_request(
        _request(tool_choice="required")
    )
    assert enforced.structured_outputs is None and SPEC_KEY in enforced.vllm_xargs

    monkeypatch.setattr(hook, "_unavailable", None)
    hook.note_config(SimpleNamespace(speculative_config=object()))
    key = metrics.UNENFORCED_REQUESTS_TOTAL + "{speculative}"
    before = metrics.counts().get(key, 0)
    served = parser_cls(tokenizer, [WEATHER_TOOL]).adjust_request(
        _request(tool_choice="required")
    )
    assert SPEC_KEY not in (served.vllm_xargs or {})
    assert served.structured_outputs == stock.structured_outputs
    assert metrics.counts()[key] == before + 1
    # Nothing changes for a request the Enforcer would not constrain anyway.
    parser_cls(tokenizer, [WEATHER_TOOL]).adjust_request(_request(tool_choice="none"))
    assert metrics.counts()[key] == before + 1
    hook.note_config(SimpleNamespace(speculative_config=None))
    assert hook.enforcer_unavailable() is not None  # read once: the server's


def test_responses_request_tools_and_history(tokenizer) -> None:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    from vllm_kimi_tools.parser.tool_parser import KimiK2RobustToolParser

    request = ResponsesRequest(
        model="m",
        input=[
            {"role": "user", "content": "hi"},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        ],
        tools=[{"type": "function", "name": "get_weather", "parameters": {}}],
    )
    parser = KimiK2RobustToolParser(tokenizer, request.tools)
    info = parser.extract_tool_calls(
        section(call("get_weather:0", {"city": "x"})), request
    )
    assert [tc.id for tc in info.tool_calls] == ["functions.get_weather:1"]


def _composed(model: Any, reasoning_parser: str) -> tuple[Any, Any]:
    """The test-bed tokenizer and the Parser vLLM composes for
    ``--tool-call-parser kimi_k2_robust --reasoning-parser REASONING``."""
    from vllm.parser.parser_manager import ParserManager
    from vllm.tokenizers import get_tokenizer

    register()
    tok = get_tokenizer(str(model), trust_remote_code=True)
    cls = ParserManager.get_parser(
        tool_parser_name="kimi_k2_robust",
        reasoning_parser_name=reasoning_parser,
        enable_auto_tools=True,
        tokenizer=tok,
    )
    return tok, cls


THINK_CASES = [
    pytest.param(
        "<think>hmm"
        + SEC
        + CALL
        + "functions.get_weather:0"
        + ARG
        + '{"city":"a"}'
        + END,
        id="section_inside_think",
    ),
    pytest.param(
        "<think>hmm" + CALL + "functions.get_weather:0" + ARG + '{"city":"a"}' + END,
        id="bare_call_inside_think",
    ),
    pytest.param(
        "<think>hmm</think>ok" + section(call("get_weather:0", {"city": "a"})),
        id="call_after_think",
    ),
]


@pytest.mark.parametrize("text", THINK_CASES)
def test_robust_reasoning_parser_keeps_markup_out_of_reasoning(text, tinykimi) -> None:
    tok, cls = _composed(tinykimi, "kimi_k2_robust")
    request = _request()
    reasoning, content, calls = cls(tok, request.tools).parse(
        text, request, enable_auto_tools=True
    )
    assert reasoning == "hmm"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "a"})
    ]
    parser = cls(tok, request.tools)
    streamed_reasoning, streamed_calls = "", []
    for delta in token_deltas(parser, tok, request, text, []):
        streamed_reasoning += delta.reasoning or ""
        streamed_calls += [tc.function.name for tc in delta.tool_calls]
    assert streamed_reasoning == "hmm"
    assert streamed_calls == ["get_weather"]
    for marker in (SEC, CALL, ARG, END):
        assert marker not in (content or "")


def _stock_bug(reason: str) -> Any:
    """vLLM's own ``kimi_k2`` as a parameter: a strict expected failure, so
    the test says so the day vLLM fixes the bug."""
    return pytest.param(
        "kimi_k2",
        marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason),
    )


@pytest.mark.parametrize(
    "reasoning_parser",
    [
        "kimi_k2_robust",
        _stock_bug(
            "kimi_k2 (vLLM 0.32, 0.33) keeps a call written in unclosed thinking as "
            "reasoning: the call is lost"
        ),
    ],
)
def test_call_written_in_unclosed_thinking_is_a_call(tinykimi, reasoning_parser):
    tok, cls = _composed(tinykimi, reasoning_parser)
    request = _request()
    text = "<think>hmm" + CALL + "functions.get_weather:0" + ARG + "{}" + END
    reasoning, _, calls = cls(tok, request.tools).parse(
        text, request, enable_auto_tools=True
    )
    assert CALL not in (reasoning or "")
    assert [c.name for c in calls] == ["get_weather"]


def _history_prompt(tok: Any) -> list[int]:
    """A rendered prompt whose history holds a tool call (and so a
    ``<|tool_calls_section_begin|>``), ending with the generation prompt."""
    text = (
        "<|im_user|>user<|im_middle|>weather?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>"
        + section(call("get_weather:0", {"city": "a"}))
        + "<|im_end|><|im_system|>tool<|im_middle|>sunny<|im_end|>"
        "<|im_user|>user<|im_middle|>and tomorrow?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|>"
    )
    return tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize(
    "reasoning_parser",
    [
        "kimi_k2_robust",
        _stock_bug(
            "kimi_k2 (vLLM 0.32, 0.33) streams the thinking as content, <think> "
            "included, after a tool-call history"
        ),
    ],
)
def test_thinking_after_a_tool_call_history_streams_as_reasoning(
    tinykimi, reasoning_parser
) -> None:
    """vLLM 0.32's prompt scan finds the history's section marker and decides
    thinking already ended, so the thinking streams as content, ``<think>``
    included; kimi_k2_robust stops the scan at the current turn."""
    tok, cls = _composed(tinykimi, reasoning_parser)
    request = _request()
    prompt = _history_prompt(tok)
    parser = cls(tok, request.tools)
    assert not parser.is_reasoning_end(prompt)
    reasoning, content = "", ""
    for delta in token_deltas(parser, tok, request, "<think>hmm</think>ok", prompt):
        reasoning += delta.reasoning or ""
        content += delta.content or ""
    assert (reasoning, content) == ("hmm", "ok")


def test_parser_refuses_to_start_without_render_hook(monkeypatch, tokenizer) -> None:
    from vllm.renderers.registry import RENDERER_REGISTRY

    from vllm_kimi_tools.parser.tool_parser import KimiK2RobustToolParser

    register()
    monkeypatch.setitem(
        RENDERER_REGISTRY.renderers, "hf", ("vllm.renderers.hf", "HfRenderer")
    )
    with pytest.raises(RuntimeError, match="chat-template hook is not installed"):
        KimiK2RobustToolParser(tokenizer, [])
    monkeypatch.setenv("KIMI_TOOLS_NORMALIZE", "0")
    KimiK2RobustToolParser(tokenizer, [])  # explicitly switched off: starts


def test_a_bad_setting_stops_the_parser_at_start_up(monkeypatch, tokenizer) -> None:
    from vllm_kimi_tools.parser.tool_parser import KimiK2RobustToolParser

    register()
    monkeypatch.setenv("KIMI_TOOLS_STREAM_ARGUMENTS", "sometimes")
    with pytest.raises(ValueError, match="KIMI_TOOLS_STREAM_ARGUMENTS"):
        KimiK2RobustToolParser(tokenizer, [])


def test_thinking_switch_off_reaches_reasoning_parser(tinykimi) -> None:
    tok, cls = _composed(tinykimi, "kimi_k2_robust")
    request = _request(chat_template_kwargs={"thinking": False})
    parser = cls(tok, request.tools, chat_template_kwargs={"thinking": False})
    reasoning, content, calls = parser.parse(
        "Plain answer." + section(call("get_weather:0", {"city": "a"})),
        request,
        enable_auto_tools=True,
    )
    assert reasoning is None
    assert content == "Plain answer."
    assert [c.name for c in calls] == ["get_weather"]


def test_the_history_is_counted_once_per_request(monkeypatch) -> None:
    """Admission, the non-streaming parse and the stream all number calls
    from the history's count: counted once per request, forgotten with it."""
    import gc

    from vllm_kimi_tools.parser import tool_parser

    counted: list[int] = []
    real = tool_parser.count_tool_calls
    monkeypatch.setattr(
        tool_parser,
        "count_tool_calls",
        lambda messages: counted.append(1) or real(messages),
    )
    request = _request()
    expected = real(request.messages)
    assert expected > 0
    for _ in range(3):
        assert tool_parser.history_tool_call_count(request) == expected
    assert counted == [1]
    key = id(request)
    del request
    gc.collect()
    assert key not in tool_parser._HISTORY_CALLS


def test_enforcer_switches(monkeypatch) -> None:
    """On by default with tools; off for tool_choice none, per request and
    per server; an unusable schema is a ValueError (HTTP 400)."""
    from vllm_kimi_tools._compat import ChatCompletionRequest
    from vllm_kimi_tools.enforcer.admission import enforced as wants_enforcer
    from vllm_kimi_tools.enforcer.spec import SPEC_KEY, EnforcerSpec
    from vllm_kimi_tools.parser.tool_parser import attach_enforcer_spec

    def request(**kw):
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object"}},
                }
            ],
            **kw,
        }
        return ChatCompletionRequest(**body)

    req = request()
    assert wants_enforcer(req)
    attach_enforcer_spec(req)
    assert EnforcerSpec.from_json(req.vllm_xargs[SPEC_KEY]).names() == ["f"]
    assert not wants_enforcer(request(tool_choice="none"))
    assert not wants_enforcer(request(vllm_xargs={"kimi_tools_enforce": "off"}))
    monkeypatch.setenv("KIMI_TOOLS_ENFORCER", "0")
    assert not wants_enforcer(request())
    monkeypatch.delenv("KIMI_TOOLS_ENFORCER")
    bad = request(
        tools=[
            {
                "type": "function",
                "function": {"name": "g", "parameters": {"type": "array"}},
            }
        ]
    )
    with pytest.raises(ValueError, match="tool 'g'"):
        attach_enforcer_spec(bad)


def test_k3_tokenizer_is_refused_with_what_to_use() -> None:
    from vllm_kimi_tools.parser.tool_parser import KimiK2RobustToolParser

    register()
    tok = MagicMock()
    k3 = {t: 200_000 + i for i, t in enumerate(tokens.K3_MARKERS)}
    tok.get_vocab.return_value = {**tokens.SPECIAL_TOKEN_IDS, **k3}
    with pytest.raises(ValueError, match="--tool-call-parser kimi_k3"):
        KimiK2RobustToolParser(tok, [])
    tok.get_vocab.return_value = dict(tokens.SPECIAL_TOKEN_IDS)
    KimiK2RobustToolParser(tok, [])  # a K2 vocabulary starts


def test_renderer_refuses_a_tokenizer_before_the_weights_load(monkeypatch) -> None:
    """vLLM builds the renderer before the engine loads the weights: with
    kimi_k2_robust on the command line, a tokenizer it cannot serve stops
    the server there; other parsers' servers are not concerned."""
    from vllm_kimi_tools.chat.renderer import fail_fast

    tok = MagicMock()
    tok.get_vocab.return_value = {"hello": 1}  # no Kimi tool tokens
    monkeypatch.setattr(sys, "argv", ["vllm", "serve", "m", "--tool-call-parser=x"])
    fail_fast(tok)
    monkeypatch.setattr(
        sys, "argv", ["vllm", "serve", "m", "--tool-call-parser", "kimi_k2_robust"]
    )
    with pytest.raises(ValueError, match="missing: <"):
        fail_fast(tok)
    k3 = {t: 200_000 + i for i, t in enumerate(tokens.K3_MARKERS)}
    tok.get_vocab.return_value = {**tokens.SPECIAL_TOKEN_IDS, **k3}
    with pytest.raises(ValueError, match="--tool-call-parser kimi_k3"):
        fail_fast(tok)
    tok.get_vocab.return_value = dict(tokens.SPECIAL_TOKEN_IDS)
    fail_fast(tok)  # a K2 vocabulary starts
    fail_fast(None)  # skip_tokenizer_init: nothing to check


def _responses_request() -> Any:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    fn = WEATHER_TOOL["function"]
    return ResponsesRequest(
        model="m",
        input="weather?",
        tools=[
            {"type": "function", "name": fn["name"], "parameters": fn["parameters"]}
        ],
    )


# What a K2.5 model writes after a prompt that opened its thinking.
SPACED_OUTPUT = (
    "Let me check. </think>好的。"
    + section(call("functions.get_weather:0", '{"city": "Tokyo"}'))
    + "<|im_end|>"
)


@pytest.fixture(scope="module")
def real_composed(real_tokenizer_dir) -> tuple[Any, Any]:
    return _composed(real_tokenizer_dir, "kimi_k2_robust")


def _spaced(tok: Any, output: list[int]) -> str:
    """vLLM's slow detokenizer with spaces on (every Responses request)."""
    from vllm.tokenizers.detokenizer_utils import (
        convert_prompt_ids_to_tokens,
        detokenize_incrementally,
    )

    prompt = tok.encode("<|im_assistant|>assistant<|im_middle|><think>")
    ids = list(prompt)
    toks, prefix, read = convert_prompt_ids_to_tokens(tok, prompt, False)
    text = ""
    for token in output:
        ids.append(token)
        new, delta, prefix, read = detokenize_incrementally(
            tok, ids, toks, prefix, read, False, True
        )
        toks.extend(new)
        text += delta
    return text


@pytest.mark.parametrize("thinking", [True, False], ids=["thinking", "no-thinking"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_text_is_exact_on_the_slow_tokenizer(real_composed, stream, thinking):
    """Responses (vLLM 0.32) cannot turn the detokenizer's spaces off: the
    parsers still return what the model wrote, streamed or not."""
    tok, cls = real_composed
    request = _responses_request()
    text = SPACED_OUTPUT.removesuffix("<|im_end|>")
    if not thinking:
        text = text.split("</think>", 1)[1]
    output = tok.encode(text)
    spaced = _spaced(tok, output)
    assert " 好的。 " in spaced  # what the parsers are given
    parser = cls(tok, request.tools, chat_template_kwargs={"thinking": thinking})
    if stream:
        reasoning = content = ""
        calls: list[Any] = []
        for i, token in enumerate(output):
            delta = parser.parse_delta(
                _spaced(tok, output[: i + 1])[len(_spaced(tok, output[:i])) :],
                [token],
                request,
                prompt_token_ids=tok.encode("<|im_middle|><think>"),
                finished=i == len(output) - 1,
            )
            if delta is not None:
                reasoning += delta.reasoning or ""
                content += delta.content or ""
                calls.extend(delta.tool_calls or [])
        args = "".join(c.function.arguments or "" for c in calls)
    else:
        reasoning, content, found = parser.parse(
            spaced, request, enable_auto_tools=True, model_output_token_ids=output
        )
        args = found[0].arguments
    assert (reasoning or None, content) == (
        "Let me check." if thinking else None,
        "好的。",
    )
    assert json.loads(args) == {"city": "Tokyo"} and args == '{"city": "Tokyo"}'


def test_chat_requests_turn_the_spaces_off(real_composed) -> None:
    tok, cls = real_composed
    request = _request()
    assert request.spaces_between_special_tokens is True
    cls(tok, request.tools).adjust_request(request)
    assert request.spaces_between_special_tokens is False
    assert request.skip_special_tokens is False


def test_enforced_request_never_returns_a_schema_invalid_call(parser_cls, tokenizer):
    """A loose tool (multipleOf 0.0001 is not enforceable) may still be
    written wrong: the parser drops such a call, counted."""
    tool = {
        "type": "function",
        "function": {
            "name": "pay",
            "parameters": {
                "type": "object",
                "properties": {"amount": {"type": "number", "multipleOf": 0.0001}},
                "required": ["amount"],
            },
        },
    }
    before = metrics.dropped_counts().get("schema_invalid", 0)
    text = lambda v: section(call("functions.pay:0", f'{{"amount": {v}}}'))  # noqa: E731
    request = _request(tools=[tool], messages=[{"role": "user", "content": "pay"}])
    parser = parser_cls(tokenizer, request.tools)
    parser.adjust_request(request)
    assert "kimi_tools_enforcer" in request.vllm_xargs
    _, _, calls = parser.parse(text("0.00015"), request, enable_auto_tools=True)
    assert not calls
    assert metrics.dropped_counts()["schema_invalid"] == before + 1
    _, _, calls = parser_cls(tokenizer, request.tools).parse(
        text("0.0002"), request, enable_auto_tools=True
    )
    assert [c.arguments for c in calls] == ['{"amount": 0.0002}']


def test_a_clients_own_enforcer_spec_is_not_trusted(parser_cls, tokenizer):
    request = _request(
        vllm_xargs={"kimi_tools_enforcer": "{}", "kimi_tools_enforce": False}
    )
    parser_cls(tokenizer, request.tools).adjust_request(request)
    assert "kimi_tools_enforcer" not in request.vllm_xargs


def _stream_pieces(parser: Any, request: Any, text: str, size: int) -> list[Any]:
    """Every tool-call delta the serving layer would send, in order."""
    out = []
    pieces = [text[i : i + size] for i in range(0, len(text), size)]
    for i, piece in enumerate(pieces):
        delta = parser.parse_delta(
            piece, [], request, prompt_token_ids=[], finished=i == len(pieces) - 1
        )
        out.extend(delta.tool_calls if delta is not None else [])
    return out


def test_enforced_call_streams_its_arguments_as_written(parser_cls, tokenizer):
    args = json.dumps({"city": "Tokyo " * 40})
    text = "Sure." + section(call("functions.get_weather:2", args))
    request = _request()
    parser_cls(tokenizer, request.tools).adjust_request(request)
    assert "kimi_tools_enforcer" in request.vllm_xargs  # the Enforcer is on
    pieces = _stream_pieces(parser_cls(tokenizer, request.tools), request, text, 5)
    assert [(p.index, p.id, p.function.name) for p in pieces[:1]] == [
        (0, "functions.get_weather:2", "get_weather")
    ]
    assert all(p.index == 0 and p.id is None for p in pieces[1:])
    assert all(p.function.name is None for p in pieces[1:])
    assert len(pieces) > 20  # the arguments went out piece by piece
    streamed = "".join(p.function.arguments or "" for p in pieces)
    _, _, calls = parser_cls(tokenizer, request.tools).parse(
        text, request, enable_auto_tools=True
    )
    assert streamed == calls[0].arguments == args


def test_unenforced_call_is_sent_whole(parser_cls, tokenizer, monkeypatch):
    text = section(call("functions.get_weather:2", {"city": "Oslo"}))
    for switch in ("KIMI_TOOLS_ENFORCER", "KIMI_TOOLS_STREAM_ARGUMENTS"):
        with monkeypatch.context() as m:
            m.setenv(switch, "0")
            request = _request()
            parser_cls(tokenizer, request.tools).adjust_request(request)
            parser = parser_cls(tokenizer, request.tools)
            pieces = _stream_pieces(parser, request, text, 3)
        assert [(p.id, p.function.arguments) for p in pieces] == [
            ("functions.get_weather:2", '{"city": "Oslo"}')
        ], switch


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_turn_without_tools_keeps_call_markup_out(parser_cls, tokenizer, stream):
    """A later turn without ``tools``: the markers still reach the parser (so
    a call the model writes anyway is dropped, counted, and its markup does
    not become content)."""
    request = _request(tools=None)
    assert request.tool_choice == "none"
    request = parser_cls(tokenizer, None).adjust_request(request)
    assert request.skip_special_tokens is False
    text = "Sure." + section(call("functions.get_weather:2", {"city": "Oslo"}))
    before = metrics.dropped_counts().get("undeclared_tool", 0)
    parser = parser_cls(tokenizer, None)
    if stream:
        content = ""
        for i, ch in enumerate(text):
            delta = parser.parse_delta(
                ch, [], request, prompt_token_ids=[], finished=i == len(text) - 1
            )
            assert delta is None or not delta.tool_calls
            content += (delta.content or "") if delta is not None else ""
    else:
        _, content, calls = parser.parse(text, request, enable_auto_tools=True)
        assert not calls
    assert content == "Sure."
    assert metrics.dropped_counts().get("undeclared_tool", 0) == before + 1
