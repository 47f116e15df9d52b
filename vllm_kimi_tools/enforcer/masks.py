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
                                 xgrammar's bitmask kernel, or on CPU, where
                                 that kernel's cost grows with the banned
                                 tokens, a row banning more than about
                                 KERNEL_MAX_BANNED through two bitwise passes
                                 over the logits' bits (bit-exact with it)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from vllm_kimi_tools.enforcer.machine import Ban, Fill, Only

# A grammar row allowing at most this many tokens is applied as a keep-list
# (gather/scatter) instead of a bitmask: 5-10x cheaper on CPU.
SPARSE_ROW_MAX = 4096
# xgrammar's CPU kernel costs ~4 us a row plus ~4 us per 1,000 banned tokens
# (~500 us for a row banning 75-90%: a pattern, an email or URI format, a
# string near its maxLength); the bitwise passes ~150 us a row, whatever it
# bans. On CPU a row banning more than about this many takes the passes.
KERNEL_MAX_BANNED = 24_576


def allowed_count(words: np.ndarray) -> np.ndarray:
    """Tokens each int32 bitmask row allows (last axis; a scalar for one row).
    Counted on unsigned words: NumPy counts the bits of a signed word's
    absolute value, so -1 (32 allowed tokens) would count as 1."""
    unsigned = words.view(np.uint32)
    if unsigned.shape[-1] % 2 == 0 and unsigned.flags.c_contiguous:
        unsigned = unsigned.view(np.uint64)  # half the words: twice as fast
    return np.bitwise_count(unsigned).sum(axis=-1)


def is_sparse(words: np.ndarray) -> bool:
    """Whether one bitmask row allows at most :data:`SPARSE_ROW_MAX` tokens.
    Most rows are told by their nonzero words alone (a fraction of the cost
    of counting bits): few of them (a structural position), or more than
    the limit (a string)."""
    nonzero = np.count_nonzero(words)
    if nonzero * 32 <= SPARSE_ROW_MAX:
        return True
    if nonzero > SPARSE_ROW_MAX:
        return False
    return bool(allowed_count(words) <= SPARSE_ROW_MAX)


def banned_many(words: np.ndarray) -> bool:
    """Whether one dense bitmask row bans more than about
    :data:`KERNEL_MAX_BANNED` tokens: an estimate from one word in
    :data:`_SAMPLE_EVERY` (a choice of kernel, never of what is allowed)."""
    sample = words[::_SAMPLE_EVERY]
    banned = len(sample) * 32 - int(allowed_count(sample))
    return banned * _SAMPLE_EVERY > KERNEL_MAX_BANNED


_SAMPLE_EVERY = 8


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
    # Keep-lists: the rows' own id tuples (one array for all at the end),
    # then the sparse grammar rows' ids (row of each id, id).
    only_rows: list[int] = field(default_factory=list)
    only_ids: list[tuple[int, ...]] = field(default_factory=list)
    sparse_rows: list[int] = field(default_factory=list)
    sparse_sel: np.ndarray | None = None
    sparse_ids: np.ndarray | None = None
    filled: list[int] = field(default_factory=list)  # until finish()
    dense_rows: list[int] = field(default_factory=list)  # rows of the bitmask
    # Rows of the bitmask that ban many tokens, for the bitwise passes.
    bitwise_rows: list[int] = field(default_factory=list)
    # Every row through the bitmask, one kernel (for a GPU; see apply_plan).
    one_bitmask: bool = False
    # Dense rows that ban many tokens by the bitwise passes (for a CPU).
    bitwise: bool = False

    def add(self, row: int, directive: Ban | Only | Fill) -> None:
        """Add ``row``'s directive (Fill: its bitmask row is filled)."""
        if isinstance(directive, Ban):
            self.bans.setdefault(directive.ids, []).append(row)
        elif isinstance(directive, Only):
            self.only_rows.append(row)
            self.only_ids.append(directive.ids)
        else:
            self.filled.append(row)

    def finish(self, bitmask: np.ndarray) -> None:
        """Route the filled rows, all at once: a sparse row becomes a
        keep-list (its bitmask row reset), the others go to the kernel."""
        if not self.filled:
            return
        if self.one_bitmask:  # no routing: the kernel takes every row
            self.dense_rows.extend(self.filled)
            self.filled = []
            return
        sparse: list[int] = []
        for row in self.filled:
            words = bitmask[row]
            if is_sparse(words):
                sparse.append(row)
            elif self.bitwise and banned_many(words):
                self.bitwise_rows.append(row)
            else:
                self.dense_rows.append(row)
        self.filled = []
        if sparse:
            at = np.array(sparse, dtype=np.int64)
            which, ids = set_bits(bitmask[at])
            self.sparse_rows.extend(sparse)
            self.sparse_sel, self.sparse_ids = at[which], ids
            bitmask[at] = -1

    @property
    def keep_rows(self) -> list[int]:
        """Rows left with a short list of ids."""
        return [*self.only_rows, *self.sparse_rows]

    def keep_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """Every keep-list at once: (row of each kept id, the id)."""
        sizes = np.fromiter(map(len, self.only_ids), np.int64, len(self.only_ids))
        sel = [np.repeat(np.array(self.only_rows, dtype=np.int64), sizes)]
        ids = [np.fromiter(chain.from_iterable(self.only_ids), np.int64, sizes.sum())]
        if self.sparse_sel is not None and self.sparse_ids is not None:
            sel.append(self.sparse_sel)
            ids.append(self.sparse_ids)
        return np.concatenate(sel), np.concatenate(ids)

    @property
    def narrowed_rows(self) -> list[int]:
        """Rows left with a short list or a grammar (not free-text bans)."""
        return [*self.keep_rows, *self.dense_rows, *self.bitwise_rows]


def apply_plan(logits: torch.Tensor, plan: MaskPlan, bitmask: np.ndarray) -> None:
    """Apply ``plan`` (finished) to ``logits`` in place; resets the dense
    bitmask rows.

    ``bitmask``: int32 words, one row per logits row (others all ones).
    Dense rows go through xgrammar's kernel, which needs contiguous
    ``logits`` (vLLM's are).
    """
    device = logits.device
    if plan.one_bitmask:
        _apply_as_one_bitmask(logits, plan, bitmask)
        return
    for ids, rows in plan.bans.items():
        logits[
            to_device(np.array(rows, dtype=np.int64), device).unsqueeze(1),
            to_device(np.array(ids, dtype=np.int64), device),
        ] = float("-inf")
    keep_rows = plan.keep_rows
    if keep_rows:
        # Keep-lists: gather the kept logits, fill the rows, put them back;
        # by flat index (one-dimensional gathers and copies are several times
        # faster than two-dimensional advanced indexing).
        sel, ids = plan.keep_lists()
        if logits.is_contiguous():
            flat = logits.view(-1)
            where = to_device(sel * logits.shape[1] + ids, device)
            kept = flat.index_select(0, where)
            _fill_rows(logits, keep_rows)
            flat.index_copy_(0, where, kept)
        else:
            sel_t, ids_t = to_device(sel, device), to_device(ids, device)
            kept = logits[sel_t, ids_t]
            _fill_rows(logits, keep_rows)
            logits[sel_t, ids_t] = kept
    if plan.dense_rows:
        _bitmask_kernel(logits, bitmask, plan.dense_rows)
    if plan.bitwise_rows:
        _apply_bitwise(logits, bitmask, plan.bitwise_rows)


def _apply_bitwise(logits: torch.Tensor, bitmask: np.ndarray, rows: list[int]) -> None:
    """xgrammar's bitmask kernel, bit for bit (a banned logit becomes -inf,
    NaN included; an allowed one is left as it is), at a cost that does not
    grow with the banned tokens: each bitmask byte picks, from two tables of
    256 entries, its 8 logits' AND mask (all ones where allowed) and OR mask
    (-inf's bits where banned). Resets the rows' bitmask."""
    keep, ban = _bitwise_tables(logits.dtype, logits.device)
    ints = logits.view(keep.dtype)
    width = logits.shape[1]
    for row in rows:
        code = to_device(bitmask[row].view(np.uint8).astype(np.int32), logits.device)
        values = ints[row]
        values.bitwise_and_(keep.index_select(0, code).view(-1)[:width])
        values.bitwise_or_(ban.index_select(0, code).view(-1)[:width])
    bitmask[rows] = -1


_INTS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@functools.lru_cache(maxsize=16)
def _bitwise_tables(
    dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each byte of a bitmask (little-endian bit order, as xgrammar's),
    its 8 logits' AND and OR masks, as integers of the logits' width."""
    ints = _INTS[torch.empty(0, dtype=dtype).element_size()]
    byte = np.arange(256, dtype=np.uint8)[:, None]
    allowed = torch.from_numpy(np.unpackbits(byte, axis=1, bitorder="little")).bool()
    zero = torch.tensor(0, dtype=ints)
    keep = torch.where(allowed, torch.tensor(-1, dtype=ints), zero)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype).view(ints)
    ban = torch.where(allowed, zero, neg_inf)
    return keep.to(device), ban.to(device)


def _apply_as_one_bitmask(
    logits: torch.Tensor, plan: MaskPlan, bitmask: np.ndarray
) -> None:
    """Write every row's directive into its bitmask row (a ban clears a few
    bits, a keep-list sets a few), then one xgrammar kernel for all rows.
    Where each kernel costs a launch and the bitmask kernel a fraction of a
    millisecond for the whole batch: a GPU."""
    words = bitmask.view(np.uint32).reshape(-1)
    width = bitmask.shape[1]
    rows: list[int] = []
    for ids, banned in plan.bans.items():
        at, bits = _word_bits(ids)
        where = (np.array(banned, dtype=np.int64)[:, None] * width + at).reshape(-1)
        words[where] &= np.tile(~bits, len(banned))
        rows += banned
    if plan.only_rows:
        sel, ids = plan.keep_lists()
        bitmask[plan.only_rows] = 0
        np.bitwise_or.at(words, sel * width + (ids >> 5), _bits(ids))
        rows += plan.only_rows
    rows += plan.dense_rows
    if rows:
        _bitmask_kernel(logits, bitmask, rows)


def _bitmask_kernel(logits: torch.Tensor, bitmask: np.ndarray, rows: list[int]) -> None:
    """xgrammar's kernel on ``rows`` of ``logits``; resets their bitmask rows
    (at once: the CPU kernel has read them, a device got a copy)."""
    import xgrammar as xgr

    device = logits.device
    xgr.apply_token_bitmask_inplace(
        logits,
        to_device(bitmask[: logits.shape[0]], device),
        indices=rows
        if device.type == "cpu"
        else to_device(np.array(rows, dtype=np.int32), device),
    )
    bitmask[rows] = -1


@functools.lru_cache(maxsize=256)
def _word_bits(ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A ban list as bitmask words: (word indices, their bits), one entry per
    word (two ids in one word share it)."""
    arr = np.array(ids, dtype=np.int64)
    at, which = np.unique(arr >> 5, return_inverse=True)
    bits = np.zeros(len(at), dtype=np.uint32)
    np.bitwise_or.at(bits, which, _bits(arr))
    return at, bits


def _bits(ids: np.ndarray) -> np.ndarray:
    """Each id's bit within its word."""
    return np.uint32(1) << (ids & 31).astype(np.uint32)


def _fill_rows(logits: torch.Tensor, rows: list[int]) -> None:
    """``logits[rows] = -inf``: on CPU one fill per run of consecutive rows
    (a row alone: about twice as fast as an indexed fill there; a run of rows
    at once: faster still, as rows in step are), one indexed fill elsewhere
    (one kernel)."""
    if logits.device.type == "cpu":
        for start, stop in runs(rows):
            logits[start:stop].fill_(float("-inf"))
    else:
        where = to_device(np.array(rows, dtype=np.int64), logits.device)
        logits.index_fill_(0, where, float("-inf"))


def runs(rows: list[int]) -> list[tuple[int, int]]:
    """Distinct ``rows`` as runs of consecutive rows: ``[(start, stop)]``."""
    out: list[tuple[int, int]] = []
    for row in sorted(rows):
        if out and out[-1][1] == row:
            out[-1] = (out[-1][0], row + 1)
        elif not out or out[-1][1] < row:
            out.append((row, row + 1))
    return out


def first_choices(
    logits: torch.Tensor, rows: list[int], rows_t: torch.Tensor
) -> torch.Tensor:
    """Each row's argmax (``rows_t``: ``rows`` on the logits' device). On
    CPU through NumPy, row by row: over a 163,840-token row about ten times
    faster than torch's argmax there, and no gathered copy."""
    if logits.device.type == "cpu" and logits.dtype in _NUMPY_FLOATS:
        view = logits.detach().numpy()
        return torch.from_numpy(
            np.fromiter((view[r].argmax() for r in rows), np.int64, len(rows))
        )
    return logits[rows_t].argmax(dim=-1)


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


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
