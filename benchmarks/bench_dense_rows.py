# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Argument rows that ban many tokens, on CPU: the Enforcer's routing against
xgrammar's bitmask kernel, side by side.

xgrammar's CPU kernel (``apply_token_bitmask_inplace``) is cheap for a row
that bans few tokens (a plain string) and slow for one that bans most (a
``pattern``, an ``email`` or ``uri`` format, a string near its
``maxLength``): it pays per banned token. For each case the real Enforcer
(the test bed's tokenizer and vocabulary) writes a call up to a point inside
the string and fills its argument row; ``--rows`` copies of that row are then
masked, per step:

* by xgrammar's kernel (what every dense row cost before, and what vLLM's
  structured output costs on CPU);
* by the Enforcer's plan (``MaskPlan``: a sparse row as a keep-list, a row
  banning more than ``KERNEL_MAX_BANNED`` by the bitwise passes, others by
  the kernel), ``finish()`` (routing) included.

Both leave the same logits, bit for bit (checked on every case).

Usage::

    python benchmarks/bench_dense_rows.py [--rows 32] [--repeats 15] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xgrammar as xgr
from results_io import save_results
from transformers import AutoTokenizer

from kimi_testbed.paths import cache_dir
from kimi_testbed.tinykimi import describe, ensure_tinykimi, needs_remote_code
from vllm_kimi_tools import tokens
from vllm_kimi_tools.enforcer.admission import build_spec
from vllm_kimi_tools.enforcer.grammars import GrammarStore
from vllm_kimi_tools.enforcer.machine import FILLED, RequestEnforcer
from vllm_kimi_tools.enforcer.masks import (
    KERNEL_MAX_BANNED,
    MaskPlan,
    allowed_count,
    apply_plan,
)
from vllm_kimi_tools.tools import DeclaredTool

VOCAB = tokens.VOCAB_SIZE


def _string(**extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"s": {"type": "string", **extra}},
        "required": ["s"],
    }


# (case, schema, the arguments written so far: inside the string)
CASES = [
    ("plain string", _string(), '{"s": "abc'),
    ("maxLength 60, 3 written", _string(maxLength=60), '{"s": "abc'),
    ("maxLength 8, 5 written", _string(maxLength=8), '{"s": "abcde'),
    ("pattern ^[a-z_]+$", _string(pattern="^[a-z_]+$"), '{"s": "abc'),
    ("format email", _string(format="email"), '{"s": "abc'),
    ("format uri", _string(format="uri"), '{"s": "https://ab'),
    ("format date-time", _string(format="date-time"), '{"s": "2026-12'),
]


def _row(store: GrammarStore, tokenizer: Any, schema: dict, written: str) -> Any:
    """The Enforcer's argument row after ``written``."""
    spec, _ = build_spec([DeclaredTool("f", schema)], first_index=0)
    enforcer = RequestEnforcer(spec, store)
    text = (
        tokens.TOOL_CALLS_SECTION_BEGIN
        + tokens.TOOL_CALL_BEGIN
        + "functions.f:0"
        + tokens.TOOL_CALL_ARGUMENT_BEGIN
        + written
    )
    width = (VOCAB + 31) // 32
    for token in tokenizer.encode(text, add_special_tokens=False):
        enforcer.directive(np.full(width, -1, np.int32))
        if not enforcer.accept(token):
            raise SystemExit(f"the Enforcer refused {token}: {enforcer.off_reason}")
    row = np.full(width, -1, np.int32)
    assert enforcer.directive(row) is FILLED
    return row


def _median_ms(
    fn: Any, logits: torch.Tensor, grammar: np.ndarray, repeats: int
) -> float:
    """``fn(logits, bitmask)``'s median over fresh copies (not timed)."""
    spent = []
    for _ in range(repeats):
        fresh, bitmask = logits.clone(), grammar.copy()
        t0 = time.perf_counter()
        fn(fresh, bitmask)
        spent.append(time.perf_counter() - t0)
    return statistics.median(spent) * 1e3


def _kernel(logits: torch.Tensor, bitmask: np.ndarray) -> None:
    """xgrammar's kernel on every row."""
    xgr.apply_token_bitmask_inplace(
        logits, torch.from_numpy(bitmask), indices=list(range(len(bitmask)))
    )


def _plan(logits: torch.Tensor, bitmask: np.ndarray) -> dict[str, int]:
    """The Enforcer's CPU plan on every row (routing included); its routes."""
    plan = MaskPlan(bitwise=True)
    for row in range(len(bitmask)):
        plan.add(row, FILLED)
    plan.finish(bitmask)
    apply_plan(logits, plan, bitmask)
    return {
        "sparse": len(plan.sparse_rows),
        "bitwise": len(plan.bitwise_rows),
        "kernel": len(plan.dense_rows),
    }


def run(rows: int, repeats: int) -> dict[str, Any]:
    model = ensure_tinykimi(cache_dir() / "tinykimi")
    tokenizer = AutoTokenizer.from_pretrained(
        model, trust_remote_code=needs_remote_code(model)
    )
    store = GrammarStore.for_hf_tokenizer(tokenizer, VOCAB)
    store.table.lengths  # noqa: B018 - built at start-up in the engine
    store.table.quotes  # noqa: B018
    logits = torch.randn(rows, VOCAB)
    out = []
    for case, schema, written in CASES:
        row = _row(store, tokenizer, schema, written)
        grammar = np.tile(row, (rows, 1))
        a, b = logits.clone(), logits.clone()
        _kernel(a, grammar.copy())
        routes = _plan(b, grammar.copy())
        if not torch.equal(a.view(torch.int32), b.view(torch.int32)):
            raise SystemExit(f"{case}: the plan and the kernel disagree")
        kernel_ms = _median_ms(_kernel, logits, grammar, repeats)
        plan_ms = _median_ms(_plan, logits, grammar, repeats)
        allowed = int(allowed_count(row))
        route = max(routes, key=lambda k: routes[k])
        result = {
            "case": case,
            "allowed": allowed,
            "banned": VOCAB - allowed,
            "route": route,
            "kernel_us_per_row": kernel_ms * 1e3 / rows,
            "plan_us_per_row": plan_ms * 1e3 / rows,
            "plan_over_kernel": plan_ms / kernel_ms,
        }
        print(result, file=sys.stderr, flush=True)
        out.append(result)
    store.shutdown()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "tokenizer": describe(model),
        "rows": rows,
        "repeats": repeats,
        "kernel_max_banned": KERNEL_MAX_BANNED,
        "cases": out,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Argument rows on CPU: the Enforcer's plan vs xgrammar's kernel (one run)",
        "",
        (
            f"{result['machine']}; torch threads {result['torch_threads']}; "
            f"{result['tokenizer']}; {result['rows']} copies of each row per "
            f"step, median of {result['repeats']} steps. Reproduce: `python "
            "benchmarks/bench_dense_rows.py --out benchmarks/results`."
        ),
        "",
        (
            "| the row (inside a string) | allowed | banned | plan's route "
            "| xgrammar's kernel µs/row | plan µs/row | plan / kernel |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        lines.append(
            f"| {c['case']} | {c['allowed']:,} | {c['banned']:,} | {c['route']} "
            f"| {c['kernel_us_per_row']:.0f} | {c['plan_us_per_row']:.0f} "
            f"| {c['plan_over_kernel']:.2f} |"
        )
    lines += [
        "",
        (
            "Routes: `sparse` (at most 4,096 allowed: a keep-list), `bitwise` "
            f"(more than about {result['kernel_max_banned']:,} banned: two "
            "bitwise passes over the logits' bits, a cost that does not grow "
            "with the banned tokens), `kernel` (xgrammar's kernel). The plan's "
            "time includes routing (`finish()`) and resetting the bitmask rows "
            "for the next step; both leave the same logits, bit for bit. CPU "
            "only: on a GPU every row goes through xgrammar's CUDA kernel."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.rows, args.repeats)
    save_results(args.out, "enforcer_dense_rows", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
