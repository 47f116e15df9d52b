# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""What vLLM 0.33 changed on the parsers' paths, run on 0.32 and on 0.33.

- Prompt-aware reasoning: 0.33 hands the rendered prompt to every parse
  (``set_prompt_token_ids``); 0.32 only to a stream's first delta.
- The render/generate split: 0.33's ``/generate`` derender parses a request
  without messages and seeds the history's tool-call count on its parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")
pytest.importorskip("torch")

from kimi_testbed.conversations import (  # noqa: E402
    CANONICAL_REASONING,
    WEATHER_ROUND_TRIP,
)
from tests.kimi_text import WEATHER_TOOL, call, section, token_deltas  # noqa: E402
from vllm_kimi_tools import register, tokens  # noqa: E402


def _prompt_aware() -> bool:
    from vllm.reasoning.abs_reasoning_parsers import ReasoningParser

    return hasattr(ReasoningParser, "set_prompt_token_ids")


PROMPT_AWARE = _prompt_aware()  # vLLM >= 0.33


@pytest.fixture(scope="module")
def k25(cache_dir: Path) -> tuple[Any, Any, Any]:
    """The K2.5 test bed through vLLM: its renderer (with the hook), its
    tokenizer, and the Parser vLLM composes for
    ``--tool-call-parser kimi_k2_robust --reasoning-parser kimi_k2_robust``."""
    from vllm.parser.parser_manager import ParserManager

    from kimi_testbed.tinykimi import ensure_tinykimi
    from vllm_kimi_tools.chat.render_cli import load_renderer

    register()
    renderer = load_renderer(
        ensure_tinykimi(cache_dir / "tinykimi-k25", template="k25")
    )
    tok = renderer.get_tokenizer()
    cls = ParserManager.get_parser(
        tool_parser_name="kimi_k2_robust",
        reasoning_parser_name="kimi_k2_robust",
        enable_auto_tools=True,
        tokenizer=tok,
    )
    return renderer, tok, cls


def _prompt(renderer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list:
    from vllm_kimi_tools.chat.render_cli import render_request

    text = render_request(
        renderer, {"messages": messages, "chat_template_kwargs": kwargs}, hook=True
    )
    return renderer.get_tokenizer().encode(text, add_special_tokens=False)


def _request(**kw: Any) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest,
    )

    body = {"model": "m", "messages": [{"role": "user", "content": "weather?"}]}
    return ChatCompletionRequest(**{**body, "tools": [WEATHER_TOOL], **kw})


def _whole(cls: Any, tok: Any, prompt: list, text: str, **parser_kw: Any):
    """A non-streaming parse as the chat server runs it (both versions hand
    the parser the prompt first; 0.32's parser drops it)."""
    request = _request()
    parser = cls(tok, request.tools, **parser_kw)
    parser.set_prompt_token_ids(prompt)
    reasoning, content, calls = parser.parse(text, request, enable_auto_tools=True)
    return reasoning, content, [c.name for c in calls or []]


def _stream(cls: Any, tok: Any, prompt: list, text: str, **parser_kw: Any):
    request = _request()
    parser = cls(tok, request.tools, **parser_kw)
    reasoning, content, names = "", "", []
    for delta in token_deltas(parser, tok, request, text, prompt):
        reasoning += delta.reasoning or ""
        content += delta.content or ""
        names += [tc.function.name for tc in delta.tool_calls if tc.function.name]
    return reasoning or None, content or None, names


_NO_PROMPT_ON_032 = pytest.mark.xfail(
    not PROMPT_AWARE,
    strict=True,
    raises=AssertionError,
    reason="vLLM 0.32 gives a non-streaming parse no prompt: the output is "
    "read as thinking",
)

CLOSED_CASES = [
    pytest.param("Sunny.", id="answer"),
    pytest.param("<think>more</think>Sunny.", id="reopened-think"),
    pytest.param("Sure." + section(call("get_weather:0", {"city": "a"})), id="call"),
]


@pytest.mark.parametrize("text", CLOSED_CASES)
@pytest.mark.parametrize(
    "parse",
    [pytest.param(_whole, id="whole", marks=_NO_PROMPT_ON_032), _stream],
    ids=["whole", "stream"],
)
def test_a_prompt_that_closed_thinking_is_parsed_as_thinking_off(
    k25, parse, text
) -> None:
    """The K2.5 template with thinking off ends the prompt with
    ``<think></think>``; the parser is not told (no ``thinking`` switch in its
    kwargs, as where the template's own default or a prefilled final
    assistant message closed it). The output is all content, a
    ``<think>`` the model writes anyway included, exactly as with the
    switch: never reasoning, never a half-removed tag."""
    renderer, tok, cls = k25
    prompt = _prompt(renderer, CANONICAL_REASONING, thinking=False)
    if not tok.decode(prompt).endswith(tokens.GENERATION_PROMPT_NO_THINKING):
        pytest.fail("the K2.5 template did not close the thinking")  # not xfail
    off = parse(cls, tok, prompt, text, chat_template_kwargs={"thinking": False})
    assert off[0] is None
    assert parse(cls, tok, prompt, text) == off
    if "<think>" in text:
        assert off[1] == text


@pytest.mark.parametrize("parse", [_whole, _stream], ids=["whole", "stream"])
def test_thinking_closed_in_an_earlier_turn_is_still_open(k25, parse) -> None:
    """The history's turns collapse to ``<think></think>`` and its calls put
    ``<|tool_calls_section_begin|>`` in the prompt; neither is in the current
    turn, whose generation prompt opens ``<think>``: the output starts in
    thinking, on 0.33's prompt-aware path too."""
    renderer, tok, cls = k25
    prompt = _prompt(renderer, CANONICAL_REASONING)
    text = tok.decode(prompt)
    assert text.endswith(tokens.GENERATION_PROMPT_THINKING)
    assert tokens.THINK_END in text and tokens.TOOL_CALLS_SECTION_BEGIN in text
    out = "hmm</think>Sunny." + section(call("get_weather:0", {"city": "a"}))
    assert parse(cls, tok, prompt, out) == ("hmm", "Sunny.", ["get_weather"])


def test_reasoning_tokens_are_not_counted_after_a_closed_prompt(k25) -> None:
    """``usage.completion_tokens_details.reasoning_tokens`` (0.33 counts on
    a fresh parser that copies the prompt's verdict)."""
    if not PROMPT_AWARE:
        pytest.skip("vLLM 0.32: no prompt reaches a non-streaming parse")
    renderer, tok, cls = k25
    request = _request()
    ids = tok.encode("<think>more</think>Sunny.", add_special_tokens=False)
    closed = cls(tok, request.tools)
    closed.set_prompt_token_ids(_prompt(renderer, CANONICAL_REASONING, thinking=False))
    assert closed.count_reasoning_tokens(ids) == 0
    opened = cls(tok, request.tools)
    opened.set_prompt_token_ids(_prompt(renderer, CANONICAL_REASONING))
    assert opened.count_reasoning_tokens(ids) > 0


# --- what reaches the detokenizer -------------------------------------------


def _responses_request() -> Any:
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    tool = {"type": "function", "name": "get_weather", "parameters": {}}
    return ResponsesRequest(model="m", input="weather?", tools=[tool])


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_the_detokenizer_keeps_markers_and_adds_no_spaces(k25, api) -> None:
    """0.33 makes ``skip_special_tokens`` optional (None: the server's default,
    which strips the markers) and gives Responses the spacing switch too:
    after the parsers' ``adjust_request`` the sampling parameters keep the
    markers, and add no spaces wherever the API has the switch (0.32's
    Responses has none; its text is unspaced by the parsers instead)."""
    _, tok, cls = k25
    request = _request() if api == "chat" else _responses_request()
    has_switch = "spaces_between_special_tokens" in type(request).model_fields
    assert has_switch == (api == "chat" or PROMPT_AWARE)
    request = cls(tok, request.tools).adjust_request(request)
    params = request.to_sampling_params(16, {})
    assert params.skip_special_tokens is False
    assert params.spaces_between_special_tokens is not has_switch


# --- the render/generate split: ids continue the conversation's count -------


def _messageless_request() -> Any:
    """The request 0.33's ``/generate`` derender parses: the render server's
    parse context, without messages."""
    from vllm.entrypoints.scale_out.token_in_token_out.protocol import ParseContext

    context = ParseContext.model_validate(
        {"tools": [WEATHER_TOOL], "tool_choice": "auto", "history_tool_call_cnt": 5}
    )
    return context, context.to_chat_request()


TWO_CALLS = " Checking. " + section(
    call("get_weather:0", {"city": "Oslo"}), call("get_weather:1", {"city": "Rome"})
)
CONTINUED = ["functions.get_weather:5", "functions.get_weather:6"]


@pytest.mark.parametrize(
    ("engine_reason", "reason"), [("stop", "tool_calls"), ("length", "length")]
)
def test_derender_ids_continue_the_conversations_count(
    k25, engine_reason, reason
) -> None:
    """Through 0.33's own derender code (``/generate`` with
    ``output_mode="derender"``): the ids continue after the render server's
    count, as on the coupled server, instead of restarting at 0, and the
    text around the markers is kept as written. 0.33's
    unified finish reason keeps a ``max_tokens`` cut after complete calls
    ``length`` (0.32's non-streaming chat said ``tool_calls``)."""
    if not PROMPT_AWARE:
        pytest.skip("vLLM 0.32 has no render/generate split")
    from vllm.outputs import CompletionOutput
    from vllm.renderers.online_derenderer import OnlineDerenderer

    renderer, tok, cls = k25
    context, request = _messageless_request()
    prompt = _prompt(renderer, CANONICAL_REASONING, thinking=False)
    derenderer = OnlineDerenderer.__new__(OnlineDerenderer)
    derenderer.renderer = renderer
    derenderer.parser = cls
    derenderer.model_config = None
    derenderer.enable_auto_tools = True
    output = CompletionOutput(
        index=0,
        text=TWO_CALLS,
        token_ids=tok.encode(TWO_CALLS, add_special_tokens=False),
        cumulative_logprob=None,
        logprobs=None,
        finish_reason=engine_reason,
    )
    ((message, finish_reason),) = derenderer._derender_text_choices(
        [output], request, context.history_tool_call_cnt, prompt
    )
    assert [tc.id for tc in message.tool_calls] == CONTINUED
    assert [json.loads(tc.function.arguments) for tc in message.tool_calls] == [
        {"city": "Oslo"},
        {"city": "Rome"},
    ]
    # Exact with Moonshot's slow tokenizer too: the text was decoded without
    # spaces around the markers (the render server's request said so).
    assert message.content == " Checking. "
    assert finish_reason == reason


def test_a_seeded_count_numbers_streamed_calls_too(k25) -> None:
    if not PROMPT_AWARE:
        pytest.skip("vLLM 0.32 has no render/generate split")
    _, tok, cls = k25
    context, request = _messageless_request()
    parser = cls(tok, request.tools, chat_template_kwargs={"thinking": False})
    parser.set_history_tool_call_count(context.history_tool_call_cnt)
    streamed = [
        tc.id
        for delta in token_deltas(parser, tok, request, TWO_CALLS)
        for tc in delta.tool_calls
        if tc.id
    ]
    assert streamed == CONTINUED


def test_without_a_seeded_count_the_messages_count() -> None:
    """The coupled server seeds nothing: the count is the conversation's own
    (and on 0.32 there is nothing to forward)."""
    from vllm.parser.abstract_parser import Parser

    from vllm_kimi_tools._compat import forward_history_tool_call_count
    from vllm_kimi_tools.parser.tool_parser import _call_parser

    installed = forward_history_tool_call_count()
    assert installed == PROMPT_AWARE
    if installed:  # idempotent: wrapped once
        method = Parser.set_history_tool_call_count
        assert forward_history_tool_call_count()
        assert Parser.set_history_tool_call_count is method
    request = _request(messages=WEATHER_ROUND_TRIP)
    ids = [c.id for c in _call_parser(request).parse_whole(TWO_CALLS).tool_calls]
    assert ids == ["functions.get_weather:1", "functions.get_weather:2"]
    seeded = _call_parser(request, 7).parse_whole(TWO_CALLS).tool_calls
    assert [c.id for c in seeded] == [
        "functions.get_weather:7",
        "functions.get_weather:8",
    ]
