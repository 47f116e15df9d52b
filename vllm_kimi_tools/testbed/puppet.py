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
grammar bitmask runs first) banned it; ``respect`` forces it only where it is
still allowed and otherwise leaves the row as the earlier stages made it.
Past the script's end the row is left alone. Load it with
``--logits-processors vllm_kimi_tools.testbed.puppet:PuppetLogitsProcessor``;
it is deliberately not an entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
MODES = ("override", "respect")


@dataclass(slots=True)
class _Row:
    script: list[int]
    mode: str
    output: list[int]  # live reference to the request's output token ids


def _script(params: SamplingParams) -> tuple[list[int], str] | None:
    extra = params.extra_args or {}
    script = extra.get(SCRIPT_KEY)
    if script is None:
        return None
    return [int(t) for t in script], str(extra.get(MODE_KEY, "override"))


class PuppetLogitsProcessor(LogitsProcessor):
    """Replays ``puppet_script`` token by token (test-only)."""

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool
    ) -> None:
        self._rows: dict[int, _Row] = {}
        self._vocab = vllm_config.model_config.get_vocab_size()

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

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            parsed = _script(params)
            if parsed is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = _Row(parsed[0], parsed[1], output)
        for a, b, direction in batch_update.moved:
            row_a = self._rows.pop(a, None)
            row_b = self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if direction is MoveDirectionality.SWAP and row_b is not None:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, row in self._rows.items():
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
