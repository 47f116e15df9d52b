# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""One decode step's masks for every enforced row, batched (no vLLM).

Each row's :data:`.machine.Directive` becomes part of one :class:`MaskPlan`,
which :func:`apply_plan` applies to the logits in place, one tensor operation
per kind for the whole batch::

    Ban(ids)    free text        logits[row, ids] = -inf
    Only(ids)   markers, header  logits[row] = -inf except logits[row, ids]
    Fill        arguments        the row's bitmask words (int32, bit i of word
                                 w allows token 32*w+i), as filled by xgrammar:
                                 a sparse row (<= SPARSE_ROW_MAX tokens) is
                                 kept as an Only list, others go through
                                 xgrammar's bitmask kernel
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_kimi_tools.enforcer.machine import Ban, Fill, Only

# A grammar row allowing at most this many tokens is applied as a keep-list
# (gather/scatter) instead of a bitmask: 5-10x cheaper on CPU.
SPARSE_ROW_MAX = 4096


def allowed_count(words: np.ndarray) -> int:
    """Tokens an int32 bitmask row allows (NumPy counts the bits of a signed
    word's absolute value: -1, 32 allowed tokens, would count as 1)."""
    return int(np.bitwise_count(words.view(np.uint32)).sum())


def set_bits(words: np.ndarray) -> np.ndarray:
    """Indices of the set bits of an int32 bitmask row (sparse rows)."""
    nonzero = np.flatnonzero(words)
    bits = np.unpackbits(
        words[nonzero].view(np.uint8).reshape(-1, 4), axis=1, bitorder="little"
    )
    word, bit = np.nonzero(bits)
    return nonzero[word] * 32 + bit


@dataclass
class MaskPlan:
    """What one step does to the logits, for all enforced rows."""

    # Ban lists by their ids: the machines reuse a few tuples, so the rows
    # in free text are banned with one scatter per tuple.
    bans: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    keep_rows: list[int] = field(default_factory=list)
    keep_ids: list[np.ndarray] = field(default_factory=list)  # per keep row
    dense_rows: list[int] = field(default_factory=list)  # rows of the bitmask

    def add(self, row: int, directive: Ban | Only | Fill, words: np.ndarray) -> None:
        """Add ``row``'s directive; ``words``: its bitmask row (for Fill)."""
        if isinstance(directive, Ban):
            self.bans.setdefault(directive.ids, []).append(row)
        elif isinstance(directive, Only):
            self.keep_rows.append(row)
            self.keep_ids.append(np.array(directive.ids, dtype=np.int64))
        elif allowed_count(words) <= SPARSE_ROW_MAX:
            self.keep_rows.append(row)
            self.keep_ids.append(set_bits(words))
            words[:] = -1
        else:
            self.dense_rows.append(row)

    @property
    def narrowed_rows(self) -> list[int]:
        """Rows left with a short list or a grammar (not free-text bans)."""
        return [*self.keep_rows, *self.dense_rows]


def apply_plan(logits: torch.Tensor, plan: MaskPlan, bitmask: np.ndarray) -> None:
    """Apply ``plan`` to ``logits`` in place; resets the dense bitmask rows.

    ``bitmask``: int32 words, one row per logits row (others all ones).
    """
    device = logits.device
    for ids, rows in plan.bans.items():
        logits[
            torch.tensor(rows, device=device).unsqueeze(1),
            torch.tensor(ids, device=device),
        ] = float("-inf")
    if plan.keep_rows:
        counts = [len(ids) for ids in plan.keep_ids]
        sel = _to(np.repeat(np.array(plan.keep_rows, dtype=np.int64), counts), device)
        ids = _to(np.concatenate(plan.keep_ids), device)
        kept = logits[sel, ids]
        logits[_to(np.array(plan.keep_rows, dtype=np.int64), device)] = float("-inf")
        logits[sel, ids] = kept
    if plan.dense_rows:
        import xgrammar as xgr

        mask = torch.from_numpy(bitmask[: logits.shape[0]]).to(
            device, non_blocking=True
        )
        xgr.apply_token_bitmask_inplace(
            logits,
            mask,
            indices=plan.dense_rows
            if device.type == "cpu"
            else torch.tensor(plan.dense_rows, device=device, dtype=torch.int32),
        )
        bitmask[plan.dense_rows] = -1


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """An index array as a tensor on ``device`` (no copy on CPU)."""
    tensor = torch.from_numpy(array)
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=True)
