# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Test-only logits processor that makes the model write a scripted output.

A request opts in through ``vllm_xargs`` (``SamplingParams.extra_args``)::

    {
        "vllm_xargs": {
            "puppet_script": [163595, 163597, 276, ...],
            "puppet_mode": "override",
        }
    }

At step ``n`` the row's logits become ``-inf`` except the script's ``n``-th
token. Modes: ``override`` forces the token even if an earlier mask (vLLM's
grammar bitmask, the Enforcer) banned it; ``respect`` forces it only where it
is still allowed and otherwise leaves the row as the earlier stages made it.

``intend`` behaves like a model with an intention (the script) that respects
earlier masks: it writes its next scripted token when allowed; when blocked it
skips ahead to the first scripted token (within 16) that is allowed now; else
it writes the first allowed of its ``puppet_closers`` (in order, e.g. ``"``,
``}``, ``<|tool_call_end|>``, ``<|im_end|>``: what a model says to wrap up);
else the model's own best allowed token. It always finishes, so what is measured is
the masks, not a random model.
With ``puppet_quote`` (the id of ``"``) it also knows where it is in JSON: it
reads the text of what it has written (each special token starts afresh) and,
inside a string, tries the quote before its other closers, as a model closes a
string before the object around it.
Past the script's end the row is left alone (``intend``: closers, then the
model). Load it with
``--logits-processors kimi_testbed.puppet:PuppetLogitsProcessor``;
it is deliberately not an entry point.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

SCRIPT_KEY = "puppet_script"
MODE_KEY = "puppet_mode"
CLOSERS_KEY = "puppet_closers"
QUOTE_KEY = "puppet_quote"
FIRST_SPECIAL = 163584  # Kimi's special tokens start here (tokens.py)
MODES = ("override", "respect", "intend")
LOOKAHEAD = 16


@dataclass(slots=True)
class _Row:
    script: list[int]
    mode: str
    output: list[int]  # live reference to the request's output token ids
    closers: list[int]
    quote: int | None = None
    cursor: int = 0  # intend: next scripted token
    next_cursor: int = 0  # ... once the token chosen at ``chosen_at`` is out
    chosen_at: int = -1
    read: int = 0  # quote: output tokens lexed so far
    in_string: bool = False
    escaped: bool = False

    def lex(self, text_of: Callable[[int], str]) -> None:
        """Follow JSON string state over the output written since last time."""
        for token in self.output[self.read :]:
            if token >= FIRST_SPECIAL:
                self.in_string = self.escaped = False
                continue
            for char in text_of(token):
                if self.escaped:
                    self.escaped = False
                elif char == "\\" and self.in_string:
                    self.escaped = True
                elif char == '"':
                    self.in_string = not self.in_string
        self.read = len(self.output)


def _row(params: SamplingParams, output: list[int]) -> _Row | None:
    extra = params.extra_args or {}
    script = extra.get(SCRIPT_KEY)
    if script is None:
        return None
    return _Row(
        [int(t) for t in script],
        str(extra.get(MODE_KEY, "override")),
        output,
        [int(t) for t in extra.get(CLOSERS_KEY) or []],
        None if extra.get(QUOTE_KEY) is None else int(extra[QUOTE_KEY]),
    )


class PuppetLogitsProcessor(LogitsProcessor):
    """Replays ``puppet_script`` token by token (test-only)."""

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool
    ) -> None:
        self._rows: dict[int, _Row] = {}
        self._vocab = vllm_config.model_config.get_vocab_size()
        self._model_config = vllm_config.model_config

    @functools.cached_property
    def _tokenizer(self) -> Any:
        from vllm.tokenizers import cached_tokenizer_from_config

        return cached_tokenizer_from_config(self._model_config)

    def _text_of(self, token: int) -> str:
        return self._tokenizer.decode([token])

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args or {}
        script = extra.get(SCRIPT_KEY)
        if script is None:
            return
        if not isinstance(script, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in script
        ):
            raise ValueError(f"{SCRIPT_KEY} must be a list of token ids")
        if extra.get(MODE_KEY, "override") not in MODES:
            raise ValueError(f"{MODE_KEY} must be one of {MODES}")
        closers = extra.get(CLOSERS_KEY) or []
        if not isinstance(closers, list) or not all(
            isinstance(t, int) for t in closers
        ):
            raise ValueError(f"{CLOSERS_KEY} must be a list of token ids")
        quote = extra.get(QUOTE_KEY)
        if quote is not None and (not isinstance(quote, int) or quote < 0):
            raise ValueError(f"{QUOTE_KEY} must be a token id")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            row = _row(params, output)
            if row is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = row
        for a, b, direction in batch_update.moved:
            row_a = self._rows.pop(a, None)
            row_b = self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if direction is MoveDirectionality.SWAP and row_b is not None:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self._rows.items():
            if row.mode == "intend":
                self._intend(logits, index, row)
                continue
            step = len(row.output)
            if step >= len(row.script):
                continue
            token = row.script[step]
            if token >= logits.shape[1]:
                continue
            kept = logits[index, token].clone()
            if row.mode == "respect" and torch.isneginf(kept):
                continue
            logits[index].fill_(float("-inf"))
            logits[index, token] = 0.0 if row.mode == "override" else kept
        return logits

    def _intend(self, logits: torch.Tensor, index: int, row: _Row) -> None:
        if len(row.output) > row.chosen_at >= 0:
            row.cursor = row.next_cursor
        row.chosen_at = len(row.output)
        allowed = ~torch.isneginf(logits[index])
        vocab = logits.shape[1]

        def ok(token: int) -> bool:
            return 0 <= token < vocab and bool(allowed[token])

        choice = None
        for ahead in range(min(LOOKAHEAD, len(row.script) - row.cursor)):
            if ok(row.script[row.cursor + ahead]):
                choice = row.script[row.cursor + ahead]
                row.next_cursor = row.cursor + ahead + 1
                break
        if choice is None:
            closers = row.closers
            if row.quote is not None:
                row.lex(self._text_of)
                if row.in_string:
                    closers = [row.quote, *closers]
            choice = next((t for t in closers if ok(t)), None)
            row.next_cursor = row.cursor
        if choice is None:
            return  # the model's own choice among what is allowed
        kept = logits[index, choice].clone()
        logits[index].fill_(float("-inf"))
        logits[index, choice] = kept
