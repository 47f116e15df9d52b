# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Chat-template preprocessor hook: vLLM's HF renderer, normalising Kimi chats.

Installed for vLLM's ``hf`` renderer mode by :func:`vllm_kimi_tools.register`
(:mod:`.hook`). For every chat rendered in a process whose server uses
``--tool-call-parser kimi_k2_robust`` (Chat Completions, Responses,
``/tokenize``, ``/render``), and only for a tokenizer with Kimi's tool
tokens, it

1. rewrites the messages with :func:`.conversation.normalize_messages`
   (canonical ``functions.NAME:IDX`` history ids, plain-string content, tool
   names on tool results, ``reasoning_content`` kept);
2. renders string content as strings (vLLM would otherwise turn ``""`` into
   ``[{'type': 'text', 'text': ''}]`` for templates it classifies as
   "openai" content format, and old Kimi templates print that list);
3. makes sure the prompt ends with a generation prompt when one was asked
   for: ``<|im_assistant|>assistant<|im_middle|>`` is appended only when the
   prompt ends with none of :data:`~vllm_kimi_tools.tokens.GENERATION_PROMPTS` (K2.5+
   templates end theirs with ``<think>`` or ``<think></think>``).

Everything else (other parsers, other models) renders exactly as stock vLLM.
Set ``KIMI_TOOLS_NORMALIZE=0`` to switch the hook off.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from vllm_kimi_tools import metrics
from vllm_kimi_tools._compat import HfRenderer, cli_tool_parser, init_logger
from vllm_kimi_tools.chat import hook
from vllm_kimi_tools.chat.conversation import normalize_messages
from vllm_kimi_tools.names import PARSER_NAME
from vllm_kimi_tools.tokens import (
    GENERATION_PROMPT,
    GENERATION_PROMPTS,
    missing_tool_tokens,
    vocab_problem,
)

logger = init_logger(__name__)


def _all_text(messages: Sequence[Mapping[str, Any]]) -> bool:
    return all(
        m.get("content") is None or isinstance(m.get("content"), str) for m in messages
    )


def prepare_chat(
    messages: Sequence[Mapping[str, Any]], params: Any
) -> tuple[list[dict[str, Any]], Any]:
    """Normalised messages, and params that render their content as strings."""
    normalized, report = normalize_messages(messages)
    if report.orphan_results:
        logger.warning(
            "tool results with tool_call_id %s answer no call in the history; "
            "rendered with ids of their own",
            report.orphan_results,
        )
    if report.id_map or report.orphan_results or report.matched_by_order:
        logger.debug(
            "kimi history normalised: ids %s, by order %s, orphans %s",
            report.id_map,
            report.matched_by_order,
            report.orphan_results,
        )
    if _all_text(normalized) and params.chat_template_content_format != "string":
        params = dataclasses.replace(params, chat_template_content_format="string")
    return normalized, params


def ends_with_generation_prompt(
    prompt: str | Sequence[int],
    generation_ids: Mapping[str, Sequence[int]] | None = None,
) -> bool:
    """Whether a prompt ends with one of the generation prompts
    (:data:`~vllm_kimi_tools.tokens.GENERATION_PROMPTS`).

    ``prompt``: text, or token ids (then ``generation_ids`` maps each form to
    its ids).
    """
    if isinstance(prompt, str):
        return prompt.endswith(GENERATION_PROMPTS)
    tail = list(prompt)
    return any(
        ids and tail[-len(ids) :] == list(ids)
        for ids in (generation_ids or {}).values()
    )


def ensure_generation_prompt(
    prompt: Any, params: Any, generation_ids: Mapping[str, Sequence[int]]
) -> Any:
    """Append the generation prompt when the template dropped it.

    A prompt already ending with any form of it (K2's
    ``<|im_assistant|>assistant<|im_middle|>``, K2.5's ``…<think>`` or
    ``…<think></think>``) is returned unchanged; otherwise K2's form is
    appended. ``generation_ids``: each generation prompt
    (:data:`~vllm_kimi_tools.tokens.GENERATION_PROMPTS`) mapped to its ids.
    """
    kwargs = params.get_apply_chat_template_kwargs()
    if not kwargs.get("add_generation_prompt") or kwargs.get("continue_final_message"):
        return prompt
    if not isinstance(prompt, dict):
        return prompt
    text = prompt.get("prompt")
    ids = prompt.get("prompt_token_ids")
    if isinstance(text, str):
        if ends_with_generation_prompt(text):
            return prompt
        prompt["prompt"] = text + GENERATION_PROMPT
    elif isinstance(ids, list) and GENERATION_PROMPT in generation_ids:
        if ends_with_generation_prompt(ids, generation_ids):
            return prompt
        prompt["prompt_token_ids"] = ids + list(generation_ids[GENERATION_PROMPT])
    else:
        return prompt
    logger.warning_once(
        "The chat template ignored add_generation_prompt; appending %r",
        GENERATION_PROMPT,
    )
    return prompt


def fail_fast(tokenizer: Any) -> None:
    """Refuse a tokenizer ``kimi_k2_robust`` cannot serve, when the command
    line selects that parser: vLLM builds the renderer before the engine
    loads the weights, the tool parser only after (its own check stays, for
    launches whose command line does not say, e.g. a ``--config`` file)."""
    if tokenizer is None or cli_tool_parser(sys.argv) != PARSER_NAME:
        return
    problem = vocab_problem(tokenizer.get_vocab(), PARSER_NAME)
    if problem is not None:
        raise ValueError(problem)


class KimiAwareHfRenderer(HfRenderer):
    """``HfRenderer`` that renders Kimi conversations as Moonshot's API does."""

    _kimi_vocab: bool | None = None
    _generation_ids: dict[str, list[int]] | None = None

    def __init__(self, config: Any, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        fail_fast(tokenizer)
        hook.note_config(config)
        # vLLM builds the renderer in the API server before it starts the
        # engine: the Enforcer's counters there will reach this /metrics.
        metrics.share_engine_counters()

    def _generation_prompt_ids(self) -> dict[str, list[int]]:
        if self._generation_ids is None:
            tokenizer = self.get_tokenizer()
            self._generation_ids = {
                form: tokenizer.encode(form, add_special_tokens=False)
                for form in GENERATION_PROMPTS
            }
        return self._generation_ids

    def _normalizing(self) -> bool:
        if not hook.normalizing():
            return False
        if self._kimi_vocab is None:
            tokenizer = self.tokenizer
            self._kimi_vocab = tokenizer is not None and not missing_tool_tokens(
                tokenizer.get_vocab()
            )
        return self._kimi_vocab

    def render_messages(self, messages: Any, params: Any) -> Any:
        if not self._normalizing():
            return super().render_messages(messages, params)
        messages, params = prepare_chat(messages, params)
        conversation, prompt = super().render_messages(messages, params)
        return conversation, ensure_generation_prompt(
            prompt, params, self._generation_prompt_ids()
        )

    async def render_messages_async(self, messages: Any, params: Any) -> Any:
        if not self._normalizing():
            return await super().render_messages_async(messages, params)
        messages, params = prepare_chat(messages, params)
        conversation, prompt = await super().render_messages_async(messages, params)
        return conversation, ensure_generation_prompt(
            prompt, params, self._generation_prompt_ids()
        )
