# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Where the model's output starts, read from the prompt's token ids (pure).

K2 and K2-Thinking generation prompts end with
``<|im_assistant|>assistant<|im_middle|>``: the output starts in free text
(K2-Thinking then opens ``<think>`` itself). K2.5, K2.6 and K2.7 open the
turn's thinking in the prompt::

    …<|im_assistant|>assistant<|im_middle|><think>           thinking on
    …<|im_assistant|>assistant<|im_middle|><think></think>   thinking off

so the output starts *inside* thinking (and closes it with ``</think>``), or
after it. Only the current turn counts: the tokens after the last
``<|im_middle|>`` of an assistant turn, back to the nearest turn boundary (a
role marker or ``<|im_end|>``). A ``<think>`` in an earlier turn does not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from vllm_kimi_tools.enforcer.vocab import Markers


class OutputStart(enum.Enum):
    TEXT = "text"  # free text; ``<think>`` may open it (K2, K2-Thinking)
    THINKING = "thinking"  # inside thinking the prompt opened (K2.5+)
    THOUGHT = "thought"  # after thinking the prompt closed (K2.5+, off)


def output_start(
    prompt: Sequence[int], markers: Markers, *, whole: bool = True
) -> OutputStart | None:
    """Where the output of a prompt ending with ``prompt`` starts.

    ``prompt`` may be the prompt's tail (``whole=False``): None then means no
    turn boundary is in it, so a longer tail is needed. A prompt without an
    assistant turn at its end (a raw completion prompt) starts in text.
    """
    think = {markers.think_begin, markers.think_end} - {None}
    boundaries = set(markers.turn_marks)
    latest: int | None = None  # the newest think marker of the current turn
    opened = False  # the turn's <|im_middle|> was seen (scanning backwards)
    for token in reversed(prompt):
        if token in boundaries:
            if token == markers.im_assistant and opened and latest is not None:
                if latest == markers.think_begin:
                    return OutputStart.THINKING
                return OutputStart.THOUGHT
            return OutputStart.TEXT
        if token == markers.im_middle:
            opened = True
        elif token in think and not opened and latest is None:
            latest = token
    return OutputStart.TEXT if whole else None


def start_from_tail(
    read: Callable[[int], Sequence[int]], markers: Markers, first: int = 16
) -> OutputStart:
    """:func:`output_start`, reading only as much of the prompt as it needs.

    ``read(n)`` returns the prompt's last ``n`` tokens (fewer: the whole
    prompt). Generation prompts put the boundary within a few tokens, so one
    short read is the rule; a long prefilled assistant turn reads more.
    """
    n = first
    while True:
        tail = read(n)
        start = output_start(tail, markers, whole=len(tail) < n)
        if start is not None:
            return start
        n *= 8


__all__ = ["OutputStart", "output_start", "start_from_tail"]
