# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The hook appends a generation prompt only when the template dropped it."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("vllm")

from vllm.renderers.params import ChatParams  # noqa: E402

from vllm_kimi_tools import tokens  # noqa: E402
from vllm_kimi_tools.chat.renderer import (  # noqa: E402
    ends_with_generation_prompt,
    ensure_generation_prompt,
)

_ID = tokens.SPECIAL_TOKEN_IDS
_ASSISTANT = 69702  # "assistant" in Moonshot's tokenizer
_HEADER = [_ID[tokens.IM_ASSISTANT], _ASSISTANT, _ID[tokens.IM_MIDDLE]]
GENERATION_IDS = {
    tokens.GENERATION_PROMPT_NO_THINKING: [
        *_HEADER,
        _ID[tokens.THINK_BEGIN],
        _ID[tokens.THINK_END],
    ],
    tokens.GENERATION_PROMPT_THINKING: [*_HEADER, _ID[tokens.THINK_BEGIN]],
    tokens.GENERATION_PROMPT: _HEADER,
}
assert set(GENERATION_IDS) == set(tokens.GENERATION_PROMPTS)

HISTORY = "<|im_user|>user<|im_middle|>hi<|im_end|>"
HISTORY_IDS = [_ID[tokens.IM_USER], 1, _ID[tokens.IM_MIDDLE], 2, _ID[tokens.IM_END]]
_FORM_NAMES = {
    tokens.GENERATION_PROMPT_NO_THINKING: "k25-no-thinking",
    tokens.GENERATION_PROMPT_THINKING: "k25-thinking",
    tokens.GENERATION_PROMPT: "k2",
}
FORMS = [pytest.param(f, id=_FORM_NAMES[f]) for f in tokens.GENERATION_PROMPTS]


def _params(**kwargs: Any) -> ChatParams:
    return ChatParams(chat_template_kwargs={"add_generation_prompt": True, **kwargs})


def _old_rule(text: str) -> str:
    # The rule before K2.5: append unless the prompt ends with K2's form.
    if text.endswith(tokens.GENERATION_PROMPT):
        return text
    return text + tokens.GENERATION_PROMPT


@pytest.mark.parametrize("form", FORMS)
def test_text_prompt_with_any_form_is_unchanged(form: str) -> None:
    text = HISTORY + form
    out = ensure_generation_prompt({"prompt": text}, _params(), GENERATION_IDS)
    assert out == {"prompt": text}
    assert out["prompt"].count(tokens.IM_ASSISTANT) == 1
    if form != tokens.GENERATION_PROMPT:
        # What the hook did to K2.5 prompts before: a second assistant header.
        assert _old_rule(text) == text + tokens.GENERATION_PROMPT


@pytest.mark.parametrize("form", FORMS)
def test_token_prompt_with_any_form_is_unchanged(form: str) -> None:
    ids = HISTORY_IDS + GENERATION_IDS[form]
    prompt = {"prompt_token_ids": list(ids)}
    out = ensure_generation_prompt(prompt, _params(), GENERATION_IDS)
    assert out == {"prompt_token_ids": ids}


def test_dropped_generation_prompt_is_appended_once() -> None:
    out = ensure_generation_prompt({"prompt": HISTORY}, _params(), GENERATION_IDS)
    assert out["prompt"] == HISTORY + tokens.GENERATION_PROMPT
    again = ensure_generation_prompt(dict(out), _params(), GENERATION_IDS)
    assert again == out


def test_dropped_generation_prompt_is_appended_to_token_ids() -> None:
    prompt = {"prompt_token_ids": list(HISTORY_IDS)}
    out = ensure_generation_prompt(prompt, _params(), GENERATION_IDS)
    assert out["prompt_token_ids"] == HISTORY_IDS + _HEADER


@pytest.mark.parametrize(
    "tail",
    [
        [_ID[tokens.THINK_BEGIN]],  # <think> without the assistant header
        [*_HEADER[:2], _ID[tokens.THINK_BEGIN]],  # header missing <|im_middle|>
    ],
    ids=["bare-think", "broken-header"],
)
def test_lookalike_token_endings_are_not_generation_prompts(tail: list[int]) -> None:
    ids = HISTORY_IDS + tail
    out = ensure_generation_prompt(
        {"prompt_token_ids": list(ids)}, _params(), GENERATION_IDS
    )
    assert out["prompt_token_ids"] == ids + _HEADER


def test_bare_think_text_is_not_a_generation_prompt() -> None:
    assert not ends_with_generation_prompt(HISTORY + tokens.THINK_BEGIN)
    assert not ends_with_generation_prompt(HISTORY + "<think></think>")


@pytest.mark.parametrize(
    "params",
    [
        ChatParams(chat_template_kwargs={"add_generation_prompt": False}),
        _params(continue_final_message=True),
    ],
    ids=["not-asked", "continue-final-message"],
)
def test_nothing_appended_unless_asked(params: ChatParams) -> None:
    out = ensure_generation_prompt({"prompt": HISTORY}, params, GENERATION_IDS)
    assert out == {"prompt": HISTORY}
    ids = {"prompt_token_ids": list(HISTORY_IDS)}
    assert ensure_generation_prompt(ids, params, GENERATION_IDS) == {
        "prompt_token_ids": HISTORY_IDS
    }


def test_token_prompt_left_alone_without_known_ids() -> None:
    prompt = {"prompt_token_ids": list(HISTORY_IDS)}
    assert ensure_generation_prompt(prompt, _params(), {}) == {
        "prompt_token_ids": HISTORY_IDS
    }
