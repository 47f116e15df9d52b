# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""``kimi_k2_robust`` reasoning parser: vLLM's Kimi K2 reasoning parser, plus
a bare tool call as an implicit end of thinking.

Kimi K2-Thinking sometimes starts a call inside its thinking, and sometimes
without the section wrapper::

    <think>I need the weather<|tool_call_begin|>functions.get_weather:0
    <|tool_call_argument_begin|>{"city": "Tokyo"}<|tool_call_end|>

vLLM's ``kimi_k2`` reasoning parser ends thinking only at ``</think>`` or
``<|tool_calls_section_begin|>``, so this call stays in ``reasoning_content``
with its markup. Here ``<|tool_call_begin|>`` ends thinking too, and the call
reaches the tool parser.

Streaming also needs to know whether thinking is still open when the prompt
ends. vLLM scans the prompt backwards for a reasoning end; for Kimi that
includes ``<|tool_calls_section_begin|>``, so any earlier tool call in the
history makes vLLM 0.32 decide thinking is over before the turn starts, and
the whole thinking streams as ``content``, ``<think>`` included. Here the scan
stops at the start of the current turn (``<|im_assistant|>``, the other role
markers and ``<|im_end|>`` are turn boundaries). vLLM 0.33 hands the prompt
to non-streaming parses too (``set_prompt_token_ids``): a prompt whose turn
already closed the thinking is parsed as thinking off, streamed or not.

With Moonshot's slow tokenizer the text is made exact first (see
:mod:`.detokenize`): ``spaces_between_special_tokens`` is turned off where
the request has the field, a stream is decoded from its token ids, and a
complete Responses output is unspaced. Use with::

    --reasoning-parser kimi_k2_robust --tool-call-parser kimi_k2_robust
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from vllm_kimi_tools._compat import (
    EventType,
    KimiK2Parser,
    ParserState,
    Transition,
    kimi_k2_config,
    make_adapters,
    rebuilt_without_messages,
)
from vllm_kimi_tools.names import PARSER_NAME
from vllm_kimi_tools.parser import detokenize
from vllm_kimi_tools.tokens import (
    IM_ASSISTANT,
    IM_END,
    IM_SYSTEM,
    IM_USER,
    TOOL_CALL_BEGIN,
)

# A reasoning end before one of these belongs to an earlier turn.
TURN_BOUNDARIES = (IM_ASSISTANT, IM_USER, IM_SYSTEM, IM_END)


@functools.cache
def robust_config(thinking: bool) -> Any:
    config = kimi_k2_config(thinking=thinking)
    if not thinking:
        return config
    transitions = dict(config.transitions)
    transitions[(ParserState.REASONING, "TOOL_START")] = Transition(
        ParserState.TOOL_NAME,
        (EventType.REASONING_END, EventType.TOOL_CALL_START),
    )
    return dataclasses.replace(
        config,
        name=PARSER_NAME,
        transitions=transitions,
        turn_boundary_tokens=frozenset(TURN_BOUNDARIES),
    )


class KimiK2RobustParser(KimiK2Parser):
    """Kimi K2 engine parser whose thinking also ends at a bare tool call."""

    def __init__(self, tokenizer: Any, tools: Any = None, **kwargs: Any) -> None:
        chat_kwargs = kwargs.get("chat_template_kwargs", {}) or {}
        thinking = chat_kwargs.get("thinking")
        enable_thinking = chat_kwargs.get("enable_thinking")
        enabled = (
            True
            if thinking is None and enable_thinking is None
            else bool(thinking) or bool(enable_thinking)
        )
        kwargs.setdefault("parser_engine_config", robust_config(enabled))
        super().__init__(tokenizer, tools, **kwargs)
        self._tool_call_start_token_id = self.vocab.get(TOOL_CALL_BEGIN)
        self._unspace = False  # this text came from the spacing detokenizer
        self._stream_text = exact_stream_text(tokenizer)

    def adjust_request(self, request: Any) -> Any:
        request = super().adjust_request(request)
        if hasattr(request, "spaces_between_special_tokens"):
            request.spaces_between_special_tokens = False
        return request

    def set_prompt_token_ids(self, prompt_token_ids: Sequence[int]) -> None:
        """The rendered prompt, before any output (vLLM 0.33, every API,
        streamed or not; vLLM 0.32 never passes it on).

        A prompt whose current turn already closed the thinking (K2.5+ with
        thinking off ends with ``<think></think>``) is parsed as thinking
        off: all content, and a ``<think>`` the model writes anyway stays in
        it as written, as when streaming on 0.32. The decision is the
        turn-bounded :meth:`is_reasoning_end` that streaming uses on both.
        """
        super().set_prompt_token_ids(prompt_token_ids)
        if self.thinking_enabled and self.is_reasoning_end(list(prompt_token_ids)):
            # vLLM 0.33 alone would start in content but still read think
            # tags there (dropping a </think>, keeping a <think>).
            self.thinking_enabled = False

    def _preprocess_feed(self, delta_text: str, delta_token_ids: Any) -> Any:
        if delta_token_ids and self._stream_text is not None:
            # Streaming: the token ids are the truth (exact on every API).
            return self._stream_text.feed(delta_token_ids), delta_token_ids
        if self._unspace:
            return unspace(self.model_tokenizer, delta_text), delta_token_ids
        return delta_text, delta_token_ids

    def extract_reasoning(self, model_output: str, request: Any) -> Any:
        self._unspace = text_spaced(request, self.model_tokenizer)
        if not self.thinking_enabled:
            # Thinking off: all content, exact for the tool parser after us.
            text = model_output
            if self._unspace:
                text = unspace(self.model_tokenizer, text)
            self._unspace = False
            return None, text
        try:
            return super().extract_reasoning(model_output, request)
        finally:
            self._unspace = False

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        content = super().extract_content_ids(input_ids)
        if content or not self.thinking_enabled:
            return content
        start = self._tool_call_start_token_id
        if start is not None and start in input_ids:
            return input_ids[input_ids.index(start) :]
        return content


def text_spaced(request: Any, tokenizer: Any) -> bool:
    """Whether a complete output for ``request`` came spaced from vLLM's slow
    detokenizer (:func:`.detokenize.spaces_added`); never for vLLM 0.33's
    derender request, decoded as the render server set it."""
    return detokenize.spaces_added(request, tokenizer) and not (
        rebuilt_without_messages(request)
    )


def exact_token_bytes(tokenizer: Any) -> Any:
    """The tokenizer's per-token bytes, shared by every parser of a process."""
    cached = _TOKEN_BYTES.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = (tokenizer, detokenize.token_bytes_fn(tokenizer))
        _TOKEN_BYTES[id(tokenizer)] = cached
    return cached[1]


def exact_stream_text(tokenizer: Any) -> detokenize.TokenText | None:
    """For a slow tokenizer, whose detokenizer puts spaces around added
    tokens: a stream's text rebuilt from its token ids (turn ends left out,
    as vLLM leaves them out). None for a fast tokenizer: its text is exact."""
    if getattr(tokenizer, "is_fast", True):
        return None
    return detokenize.TokenText(exact_token_bytes(tokenizer), stop_token_ids(tokenizer))


def stop_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids that end a Kimi turn: vLLM never shows their text, so neither do we."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, vocab.get(IM_END)}
    return frozenset(i for i in ids if isinstance(i, int))


def unspace(tokenizer: Any, text: str) -> str:
    """``text`` without the slow detokenizer's spaces around added tokens."""
    cached = _ADDED.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        pattern = detokenize.added_token_pattern(tokenizer.get_added_vocab())
        cached = (tokenizer, pattern)
        _ADDED[id(tokenizer)] = cached
    return detokenize.unspace(text, cached[1])


_TOKEN_BYTES: dict[int, tuple[Any, Any]] = {}
_ADDED: dict[int, tuple[Any, Any]] = {}

KimiK2RobustReasoningParser, _ = make_adapters(KimiK2RobustParser)
