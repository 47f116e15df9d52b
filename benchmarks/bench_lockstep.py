# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Where the Enforcer's time goes in the engine benchmark's batch, per phase.

``bench_engine.py`` sends N identical requests at once, so every row is in
the same phase at the same step. This drives the real logits processor (V1
interface, CPU tensors, the test bed's vocabulary) with N rows writing that
benchmark's output token by token, and reports per phase the median
``apply()`` and, for the steps in the arguments, its parts: reading the
tokens (``accept``), xgrammar's batch fill, the directives, routing the filled
rows (``finish``), and the tensor work, with the whole-row ``-inf`` fills of
the rows kept to short lists (the memory-bound floor of a dense mask).

Usage::

    python benchmarks/bench_lockstep.py [--rows 64] [--out DIR] [--before JSON]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import xgrammar as xgr
from bench_engine import OUTPUT, TOOLS
from results_io import save_results
from transformers import AutoTokenizer

from kimi_testbed.paths import cache_dir
from kimi_testbed.processor import processor
from kimi_testbed.tinykimi import describe, ensure_tinykimi, needs_remote_code
from vllm_kimi_tools import tokens
from vllm_kimi_tools._compat import BatchUpdate
from vllm_kimi_tools.enforcer import logits_processor, masks
from vllm_kimi_tools.enforcer.admission import build_spec
from vllm_kimi_tools.enforcer.grammars import GrammarStore
from vllm_kimi_tools.enforcer.machine import RequestEnforcer
from vllm_kimi_tools.enforcer.spec import SPEC_KEY
from vllm_kimi_tools.tools import DeclaredTool

PARTS = {
    "accept": (logits_processor.KimiToolEnforcer, "_accept"),
    "fill (batch)": (logits_processor.KimiToolEnforcer, "_fill"),
    "of which xgrammar": (xgr.BatchGrammarMatcher, "batch_fill_next_token_bitmask"),
    "directives": (RequestEnforcer, "directive_filled"),
    "finish (routing)": (masks.MaskPlan, "finish"),
    "tensor": (logits_processor.KimiToolEnforcer, "_apply"),
    "of which -inf row fills": (masks, "_fill_rows"),
}


def _timed(spent: dict[str, float], label: str, fn: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - t0

    return call


def run(rows: int) -> dict[str, Any]:
    model = ensure_tinykimi(cache_dir() / "tinykimi")
    tokenizer = AutoTokenizer.from_pretrained(
        model, trust_remote_code=needs_remote_code(model)
    )
    store = GrammarStore.for_hf_tokenizer(tokenizer, tokens.VOCAB_SIZE)
    spec, _ = build_spec(
        [
            DeclaredTool(t["function"]["name"], t["function"]["parameters"])
            for t in TOOLS
        ],
        first_index=0,
    )
    for tool in spec.tools:
        store.get(tool.grammar, wait_s=120)
    store.table.lengths  # noqa: B018 - built at start-up in the engine
    store.table.quotes  # noqa: B018
    script = tokenizer.encode(OUTPUT, add_special_tokens=False)
    spent: dict[str, float] = collections.defaultdict(float)
    for label, (owner, name) in PARTS.items():
        setattr(owner, name, _timed(spent, label, getattr(owner, name)))
    lp = processor(store)
    outputs: list[list[int]] = [[] for _ in range(rows)]
    params = SimpleNamespace(extra_args={SPEC_KEY: spec.to_json()})
    added = [(i, params, [1, 2, 3], outputs[i]) for i in range(rows)]
    lp.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))
    base = torch.randn(rows, tokens.VOCAB_SIZE)
    by_phase: dict[str, list[float]] = collections.defaultdict(list)
    parts: dict[str, float] = collections.defaultdict(float)
    for token in script:
        logits = base.clone()
        spent.clear()
        t0 = time.perf_counter()
        lp.apply(logits)
        seconds = time.perf_counter() - t0
        # The phase the step masked for: after its newest token.
        phase = lp._requests[0].enforcer.phase.name
        by_phase[phase].append(seconds)
        if phase == "ARGS":
            for label, seconds in spent.items():
                parts[label] += seconds
        for out in outputs:
            out.append(token)
    store.shutdown()
    n_args = len(by_phase["ARGS"])
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "tokenizer": describe(model),
        "rows": rows,
        "steps": len(script),
        "phases": {
            phase: {"steps": len(v), "apply_ms": statistics.median(v) * 1e3}
            for phase, v in by_phase.items()
        },
        "args_parts_ms": {k: parts[k] / n_args * 1e3 for k in PARTS if k in parts},
        "args_stood_down": sum(r.stood_down for r in lp._requests.values()),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# The engine benchmark's batch through the Enforcer, per phase (one run)",
        "",
        (
            f"{result['machine']}; torch threads {result['torch_threads']}; "
            f"{result['tokenizer']}; {result['rows']} rows writing "
            f"`bench_engine.py`'s output in step ({result['steps']} steps), CPU "
            "tensors. Reproduce: `python benchmarks/bench_lockstep.py --out "
            "benchmarks/results`."
        ),
        "",
    ]
    before = result.get("before")
    if before is not None:
        lines += [f"Before → after ({before['label']}).", ""]

    def ms(now: float, then: float | None) -> str:
        return f"{now:.2f}" if then is None else f"{then:.2f} → {now:.2f}"

    lines += [
        "| phase (of the rows, at the step) | steps | `apply()` median ms |",
        "|---|---|---|",
    ]
    for phase, row in result["phases"].items():
        then = before["phases"].get(phase, {}).get("apply_ms") if before else None
        lines.append(f"| {phase} | {row['steps']} | {ms(row['apply_ms'], then)} |")
    lines += [
        "",
        "Steps in the arguments, mean ms per step by part:",
        "",
        "| part | ms |",
        "|---|---|",
    ]
    for label, now in result["args_parts_ms"].items():
        then = before["args_parts_ms"].get(label) if before else None
        lines.append(f"| {label} | {ms(now, then)} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="enforcer_lockstep")
    ap.add_argument(
        "--before",
        type=Path,
        help="an earlier run's JSON, shown beside this one (its 'label' names it)",
    )
    args = ap.parse_args()
    result = run(args.rows)
    if args.before is not None:
        result["before"] = json.loads(args.before.read_text())
    print(json.dumps(result), file=sys.stderr)
    save_results(args.out, args.name, result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
