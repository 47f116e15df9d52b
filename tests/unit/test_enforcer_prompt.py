# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Where the output starts, read from the prompt's ids (pure, no tokenizer),
and the K2.5+ generation prompts through Moonshot's real tokenizer."""

from __future__ import annotations

import pytest

from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.prompt import OutputStart, output_start, start_from_tail
from vllm_kimi_tools.enforcer.vocab import Markers

M = Markers.from_vocab(kt.SPECIAL_TOKEN_IDS)
ID = kt.SPECIAL_TOKEN_IDS
USER, ASSISTANT, SYSTEM = ID[kt.IM_USER], ID[kt.IM_ASSISTANT], ID[kt.IM_SYSTEM]
MIDDLE, END = ID[kt.IM_MIDDLE], ID[kt.IM_END]
THINK, UNTHINK = ID[kt.THINK_BEGIN], ID[kt.THINK_END]
ROLE, TEXT = 69702, 1000  # "assistant", any text token


def turn(role: int, *content: int, end: bool = True) -> list[int]:
    return [role, ROLE, MIDDLE, *content, *([END] if end else [])]


HISTORY = [
    *turn(SYSTEM, TEXT),
    *turn(USER, TEXT),
    *turn(ASSISTANT, THINK, TEXT, UNTHINK, TEXT),
    *turn(USER, TEXT),
]


@pytest.mark.parametrize(
    ("prompt", "start"),
    [
        # K2 / K2-Thinking: the generation prompt ends at <|im_middle|>.
        (HISTORY + turn(ASSISTANT, end=False), OutputStart.TEXT),
        # K2.5+: thinking on, thinking off.
        (HISTORY + turn(ASSISTANT, THINK, end=False), OutputStart.THINKING),
        (HISTORY + turn(ASSISTANT, THINK, UNTHINK, end=False), OutputStart.THOUGHT),
        # A prefilled assistant turn: the newest think marker counts.
        (HISTORY + turn(ASSISTANT, THINK, TEXT, end=False), OutputStart.THINKING),
        (
            HISTORY + turn(ASSISTANT, THINK, TEXT, UNTHINK, TEXT, end=False),
            OutputStart.THOUGHT,
        ),
        # An earlier turn's thinking, open or closed, does not count.
        (
            [*turn(ASSISTANT, THINK, TEXT), *turn(USER), *turn(ASSISTANT, end=False)],
            OutputStart.TEXT,
        ),
        (HISTORY, OutputStart.TEXT),  # no generation prompt
        (turn(USER, THINK, end=False), OutputStart.TEXT),  # not an assistant turn
        # A marker before the turn's <|im_middle|> is not content.
        ([ASSISTANT, THINK, MIDDLE], OutputStart.TEXT),
        ([THINK, TEXT], OutputStart.TEXT),  # a raw prompt: no turn at all
        ([], OutputStart.TEXT),
    ],
)
def test_output_start(prompt: list[int], start: OutputStart) -> None:
    assert output_start(prompt, M) is start


def test_a_tail_without_a_boundary_asks_for_more() -> None:
    assert output_start([MIDDLE, THINK], M, whole=False) is None
    assert output_start([ASSISTANT, ROLE, MIDDLE, THINK], M, whole=False) is (
        OutputStart.THINKING
    )


def test_start_from_tail_reads_only_what_it_needs() -> None:
    prompt = HISTORY + turn(ASSISTANT, THINK, *[TEXT] * 40, end=False)
    reads: list[int] = []

    def read(n: int) -> list[int]:
        reads.append(n)
        return prompt[-n:]

    assert start_from_tail(read, M) is OutputStart.THINKING
    assert reads == [16, 128]  # the turn began 44 tokens back
    reads.clear()
    short = turn(ASSISTANT, THINK, UNTHINK, end=False)
    assert start_from_tail(lambda n: reads.append(n) or short[-n:], M) is (
        OutputStart.THOUGHT
    )
    assert reads == [16]


@pytest.mark.parametrize(
    ("suffix", "start"),
    [
        (kt.GENERATION_PROMPT, OutputStart.TEXT),
        (kt.GENERATION_PROMPT_THINKING, OutputStart.THINKING),
        (kt.GENERATION_PROMPT_NO_THINKING, OutputStart.THOUGHT),
    ],
)
def test_real_tokenizer_generation_prompts(real_kimi_tokenizer, suffix, start) -> None:
    history = (
        "<|im_system|>system<|im_middle|>You are Kimi.<|im_end|>"
        "<|im_user|>user<|im_middle|>Hi<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>Hello!<|im_end|>"
        "<|im_user|>user<|im_middle|>Weather in Oslo? <think> is a tag<|im_end|>"
    )
    ids = real_kimi_tokenizer.encode(history + suffix, add_special_tokens=False)
    assert output_start(ids, Markers.from_vocab(real_kimi_tokenizer.get_vocab())) is (
        start
    )
