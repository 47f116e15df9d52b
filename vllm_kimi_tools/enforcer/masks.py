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


def allowed_count(words: np.ndarray) -> np.ndarray:
    """Tokens each int32 bitmask row allows (last axis; a scalar for one row).
    Counted on unsigned words: NumPy counts the bits of a signed word's
    absolute value, so -1 (32 allowed tokens) would count as 1."""
    return np.bitwise_count(words.view(np.uint32)).sum(axis=-1)


def set_bits(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The set bits of int32 bitmask rows (2-D): (row of each, its token id),
    in row order."""
    # One-dimensional scans of booleans: ten times faster than NumPy's
    # nonzero on int32 or uint8 arrays.
    flat = np.flatnonzero(words.reshape(-1) != 0)
    bits = np.unpackbits(words.reshape(-1)[flat].view(np.uint8), bitorder="little")
    at = np.flatnonzero(bits.view(bool))
    rows, word = np.divmod(flat, words.shape[1])  # per word, then per bit
    which = at >> 5
    return rows[which], word[which] * 32 + (at & 31)


@dataclass
class MaskPlan:
    """What one step does to the logits, for all enforced rows."""

    # Ban lists by their ids: the machines reuse a few tuples, so the rows
    # in free text are banned with one scatter per tuple.
    bans: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    keep_rows: list[int] = field(default_factory=list)
    keep_sel: list[np.ndarray] = field(default_factory=list)  # row of each id
    keep_ids: list[np.ndarray] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)  # until finish()
    dense_rows: list[int] = field(default_factory=list)  # rows of the bitmask

    def add(self, row: int, directive: Ban | Only | Fill) -> None:
        """Add ``row``'s directive (Fill: its bitmask row is filled)."""
        if isinstance(directive, Ban):
            self.bans.setdefault(directive.ids, []).append(row)
        elif isinstance(directive, Only):
            ids = np.array(directive.ids, dtype=np.int64)
            self.keep_rows.append(row)
            self.keep_sel.append(np.full(len(ids), row, dtype=np.int64))
            self.keep_ids.append(ids)
        else:
            self.filled.append(row)

    def finish(self, bitmask: np.ndarray) -> None:
        """Route the filled rows, all at once: a sparse row becomes a
        keep-list (its bitmask row reset), the others go to the kernel."""
        if not self.filled:
            return
        rows = np.array(self.filled, dtype=np.int64)
        self.filled = []
        counts = allowed_count(bitmask[rows])
        sparse = rows[counts <= SPARSE_ROW_MAX]
        self.dense_rows.extend(rows[counts > SPARSE_ROW_MAX].tolist())
        if len(sparse):
            which, ids = set_bits(bitmask[sparse])
            self.keep_rows.extend(sparse.tolist())
            self.keep_sel.append(sparse[which])
            self.keep_ids.append(ids)
            bitmask[sparse] = -1

    @property
    def narrowed_rows(self) -> list[int]:
        """Rows left with a short list or a grammar (not free-text bans)."""
        return [*self.keep_rows, *self.dense_rows]


def apply_plan(logits: torch.Tensor, plan: MaskPlan, bitmask: np.ndarray) -> None:
    """Apply ``plan`` (finished) to ``logits`` in place; resets the dense
    bitmask rows.

    ``bitmask``: int32 words, one row per logits row (others all ones).
    Dense rows go through xgrammar's kernel, which needs contiguous
    ``logits`` (vLLM's are).
    """
    device = logits.device
    for ids, rows in plan.bans.items():
        logits[
            to_device(np.array(rows, dtype=np.int64), device).unsqueeze(1),
            to_device(np.array(ids, dtype=np.int64), device),
        ] = float("-inf")
    if plan.keep_rows:
        # Keep-lists: gather the kept logits, fill the rows, put them back;
        # by flat index (one-dimensional gathers and copies are several times
        # faster than two-dimensional advanced indexing).
        sel, ids = np.concatenate(plan.keep_sel), np.concatenate(plan.keep_ids)
        if logits.is_contiguous():
            flat = logits.view(-1)
            where = to_device(sel * logits.shape[1] + ids, device)
            kept = flat.index_select(0, where)
            _fill_rows(logits, plan.keep_rows)
            flat.index_copy_(0, where, kept)
        else:
            sel_t, ids_t = to_device(sel, device), to_device(ids, device)
            kept = logits[sel_t, ids_t]
            _fill_rows(logits, plan.keep_rows)
            logits[sel_t, ids_t] = kept
    if plan.dense_rows:
        import xgrammar as xgr

        rows = plan.dense_rows
        xgr.apply_token_bitmask_inplace(
            logits,
            to_device(bitmask[: logits.shape[0]], device),
            indices=rows
            if device.type == "cpu"
            else to_device(np.array(rows, dtype=np.int32), device),
        )
        # Safe at once: the CPU kernel has read it; a device got a copy.
        bitmask[rows] = -1


def _fill_rows(logits: torch.Tensor, rows: list[int]) -> None:
    """``logits[rows] = -inf``: one row at a time on CPU (about twice as fast
    as an indexed fill there), one indexed fill elsewhere (one kernel)."""
    if logits.device.type == "cpu":
        for row in rows:
            logits[row].fill_(float("-inf"))
    else:
        where = to_device(np.array(rows, dtype=np.int64), logits.device)
        logits.index_fill_(0, where, float("-inf"))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` as a tensor on ``device``: no copy on CPU; elsewhere a copy
    from pinned memory, which does not wait for the device (a copy from
    pageable memory synchronises the stream). The pinned block comes from
    torch's host allocator, which reuses it only once the copy is done, so
    ``array`` may change as soon as this returns."""
    tensor = torch.from_numpy(array)
    if device.type == "cpu":
        return tensor
    if torch.cuda.is_available():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
