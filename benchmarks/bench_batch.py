# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer at production batch sizes: per decode step, side by side.

The real logits processor (``KimiToolEnforcer``, V1 interface) drives a batch
of B requests on CPU tensors over the test bed's 163,840-token vocabulary.
Each request declares 12 BFCL tools and writes a script: free text, then a
BFCL ground-truth call to one of its tools (tokenized by the test bed's
tokenizer, so every machine advances as a model's would). Rows start at
random points of their scripts, and a finished row takes a new request (as
in continuous batching), so every step mixes free text, call headers and
arguments alike. Over ``--steps`` steps it measures, per step:

* ``apply()`` in all, split into its host part (reading tokens, the
  machines, xgrammar's bitmask fill, building the plan) and its tensor part
  (the masks applied to the logits);
* beside it, what xgrammar's batch path costs for the same argument rows
  (``BatchGrammarMatcher.batch_fill_next_token_bitmask`` +
  ``apply_token_bitmask_inplace``, as vLLM's structured output does), and one
  ``max`` pass over the whole logits (the floor of any dense operation).

Usage::

    python benchmarks/bench_batch.py [--sizes 1,8,32,128,256,512] [--out DIR]

``--device cuda`` (written for a GPU machine, **not run yet**: none in this
project's CI) puts the logits on the GPU and also reports, per step, the
device synchronisations ``apply()`` makes (``torch.cuda`` sync debug mode;
the goal is 0 in the steady state on the V1 interface) and its host time
while the GPU is still busy with earlier work (a step that waits for the
device takes at least ``--busy-ms``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import xgrammar as xgr
from results_io import save_results
from transformers import AutoTokenizer

from kimi_testbed.corpora import bfcl_cases
from kimi_testbed.paths import cache_dir
from kimi_testbed.processor import processor
from kimi_testbed.tinykimi import describe, ensure_tinykimi, needs_remote_code
from kimi_testbed.walk import call_text
from vllm_kimi_tools import tokens
from vllm_kimi_tools._compat import BatchUpdate
from vllm_kimi_tools.enforcer.admission import build_spec
from vllm_kimi_tools.enforcer.grammars import GrammarStore
from vllm_kimi_tools.enforcer.machine import Phase
from vllm_kimi_tools.enforcer.spec import SPEC_KEY
from vllm_kimi_tools.tools import DeclaredTool

VOCAB = tokens.VOCAB_SIZE
TOOLS_PER_REQUEST = 12
WORDS = [
    "the",
    "weather",
    "report",
    "says",
    "we",
    "should",
    "check",
    "the",
    "schedule",
    "before",
    "we",
    "book",
    "a",
    "room",
    "for",
    "the",
    "team",
    "meeting",
    "and",
    "look",
    "up",
    "the",
    "latest",
    "numbers",
    "on",
    "sales",
]


def _requests(tokenizer: Any, n: int, rng: random.Random) -> list[tuple[Any, list]]:
    """``n`` (SamplingParams-like, script) pairs from BFCL cases."""
    cases = [c for c in bfcl_cases() if len(c.calls) == 1]
    pool = [t for c in cases for t in c.tools]
    out = []
    for _ in range(n):
        case = rng.choice(cases)
        names = {t["function"]["name"] for t in case.tools}
        tools = list(case.tools)
        while len(tools) < TOOLS_PER_REQUEST:
            extra = rng.choice(pool)
            if extra["function"]["name"] not in names:
                names.add(extra["function"]["name"])
                tools.append(extra)
        spec, _ = build_spec(
            [
                DeclaredTool(t["function"]["name"], t["function"]["parameters"])
                for t in tools
            ],
            first_index=0,
        )
        args = json.dumps(case.calls[0][1], ensure_ascii=False)
        prose = " ".join(rng.choice(WORDS) for _ in range(2 * len(args) // 5 + 40))
        text = prose.capitalize() + "." + call_text(case.calls)
        script = tokenizer.encode(text, add_special_tokens=False)
        params = SimpleNamespace(extra_args={SPEC_KEY: spec.to_json()})
        out.append((params, script))
    return out


def _ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1e3


def run_batch(
    store: GrammarStore,
    tokenizer: Any,
    batch: int,
    steps: int,
    seed: int,
    device: str = "cpu",
    busy_ms: float = 20.0,
    cold: bool = False,
) -> dict[str, Any]:
    rng = random.Random(seed)
    # The batch, and the requests that take a row when one finishes (as in
    # continuous batching): the phase mix stays the same from step to step.
    requests = _requests(tokenizer, batch, rng)
    waiting = _requests(tokenizer, batch, rng)
    # Compiled first, not measured here; ``cold``: the requests that join
    # later bring schemas the store has not seen (compiled while it runs).
    for params, _ in requests if cold else requests + waiting:
        for tool in json.loads(params.extra_args[SPEC_KEY])["tools"]:
            store.get(tool["grammar"], wait_s=120)
    on_gpu = device != "cpu"
    lp = processor(store, torch.device(device), on_gpu)
    outputs: list[list[int]] = []
    cursors: list[int] = []
    added = []
    for row, (params, script) in enumerate(requests):
        start = rng.randrange(0, len(script))
        outputs.append(list(script[:start]))
        cursors.append(start)
        added.append((row, params, [1, 2, 3], outputs[row]))
    lp.update_state(BatchUpdate(batch_size=batch, removed=[], added=added, moved=[]))
    base = torch.randn(batch, VOCAB, device=device)
    lp.apply(base.clone())  # catch up to the starting points (not measured)

    section = tokens.SPECIAL_TOKEN_IDS[tokens.TOOL_CALLS_SECTION_BEGIN]

    def next_tokens() -> BatchUpdate | None:
        """Each row's next token; a finished row takes the next request (an
        added request at a finished row's index replaces it, as vLLM's batch
        updates say: that index is not also ``removed``)."""
        finished = []
        for row, (_, script) in enumerate(requests):
            if cursors[row] < len(script):
                outputs[row].append(script[cursors[row]])
                cursors[row] += 1
            else:
                finished.append(row)
        if finished:
            added = []
            for row in finished:
                requests[row] = waiting[row % len(waiting)]
                # Cold: the request calls at once (its prose already
                # written), the worst case for a grammar still compiling.
                script = requests[row][1]
                start = script.index(section) if cold and section in script else 0
                outputs[row], cursors[row] = list(script[:start]), start
                added.append((row, requests[row][0], [1, 2, 3], outputs[row]))
            return BatchUpdate(batch_size=batch, removed=[], added=added, moved=[])
        return None

    tensor_s: list[float] = []
    real_apply = lp._apply

    def timed_apply(*args: Any) -> None:
        t0 = time.perf_counter()
        real_apply(*args)
        tensor_s.append(time.perf_counter() - t0)

    lp._apply = timed_apply  # type: ignore[method-assign]
    xgrammar_s = _time_xgrammar_calls()
    batcher = xgr.BatchGrammarMatcher()
    bitmask = xgr.allocate_token_bitmask(batch, VOCAB)
    total, host, tensor, xgram, dense, in_xgrammar = [], [], [], [], [], []
    syncs, busy_host = [], []
    phases: Counter[str] = Counter()
    per_step_phases: list[dict[str, int]] = []
    joined = 0
    waits0, waited0 = store.stats.waits, store.stats.wait_seconds
    timeouts0 = store.stats.timeouts
    for _ in range(steps):
        update = next_tokens()
        joined += len(update.added) if update is not None else 0
        logits = base.clone()
        tensor_s.clear()
        xgrammar_s.clear()
        # The step: the batch update (new requests' specs read), then apply.
        t0 = time.perf_counter()
        lp.update_state(update)
        updated = time.perf_counter() - t0
        if on_gpu:
            spent, n_syncs, host_busy = _gpu_step(lp, logits, busy_ms)
            syncs.append(n_syncs)
            busy_host.append(host_busy)
        else:
            t0 = time.perf_counter()
            lp.apply(logits)
            spent = time.perf_counter() - t0
        spent += updated
        total.append(spent)
        in_xgrammar.append(sum(xgrammar_s))
        tensor.append(sum(tensor_s))
        host.append(spent - sum(tensor_s))
        xgrammar_s.append(-1.0)  # not the processor's: stop counting
        # The same argument rows through xgrammar's batch path.
        rows, matchers = [], []
        step_phases: Counter[str] = Counter()
        for row, req in lp._requests.items():
            enforcer = req.enforcer
            step_phases[enforcer.phase.name if enforcer is not None else "OFF"] += 1
            if enforcer is not None and enforcer.phase is Phase.ARGS:
                rows.append(row)
                matchers.append(enforcer._ensure_matcher())
        phases.update(step_phases)
        per_step_phases.append(dict(step_phases))
        other = base.clone()
        t0 = time.perf_counter()
        if rows:
            batcher.batch_fill_next_token_bitmask(matchers, bitmask, indices=rows)
            xgr.apply_token_bitmask_inplace(
                other,
                bitmask.to(device),
                indices=rows if not on_gpu else torch.tensor(rows, device=device),
            )
        _settle(on_gpu)
        xgram.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        base.max(dim=-1)
        _settle(on_gpu)
        dense.append(time.perf_counter() - t0)
    stood_down = sum(1 for r in lp._requests.values() if r.stood_down)
    n = sum(phases.values())
    gpu = (
        {
            "device": torch.cuda.get_device_name(),
            "syncs_per_step_median": statistics.median(syncs),
            "syncs_per_step_max": max(syncs),
            "busy_ms": busy_ms,
            "host_ms_while_device_busy": _ms(busy_host),
        }
        if on_gpu
        else {}
    )
    return {
        **gpu,
        "cold": cold,
        "batch": batch,
        "steps": steps,
        "apply_ms": _ms(total),
        "apply_max_ms": max(total) * 1e3,
        # Where the rows were (after the step) in the slowest step.
        "slowest_step_phases": per_step_phases[total.index(max(total))],
        "slowest_over_median": max(total) / statistics.median(total),
        "host_ms": _ms(host),
        "host_us_per_row": _ms(host) * 1e3 / batch,
        "host_xgrammar_ms": _ms(in_xgrammar),
        "tensor_ms": _ms(tensor),
        "xgrammar_batch_ms": _ms(xgram),
        "max_pass_ms": _ms(dense),
        "apply_over_xgrammar": _ms(total) / max(_ms(xgram), 1e-9),
        "phase_mix": {k: round(v / n, 3) for k, v in sorted(phases.items())},
        "apply_steps_ms": [round(s * 1e3, 3) for s in total],
        "stood_down": stood_down,
        "joined": joined,
        # Rows that had to wait for their grammar (a cold store), in all.
        "grammar_waits": store.stats.waits - waits0,
        "grammar_wait_ms": (store.stats.wait_seconds - waited0) * 1e3,
        "grammar_timeouts": store.stats.timeouts - timeouts0,
    }


_XGRAMMAR_SPENT: list[float] | None = None


def _time_xgrammar_calls() -> list[float]:
    """Time spent in xgrammar's matcher calls (building matchers, accepting
    tokens, filling bitmasks) from now on: the seconds of each call, summed
    by the caller; a -1 in the list stops the counting until it is cleared.
    Patched once per process."""
    global _XGRAMMAR_SPENT
    if _XGRAMMAR_SPENT is not None:
        return _XGRAMMAR_SPENT
    spent: list[float] = []
    _XGRAMMAR_SPENT = spent

    def timed(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if spent and spent[-1] < 0:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - t0)

        return call

    for cls, name in (
        (xgr.GrammarMatcher, "__init__"),
        (xgr.GrammarMatcher, "accept_token"),
        (xgr.GrammarMatcher, "fill_next_token_bitmask"),
        (xgr.BatchGrammarMatcher, "batch_fill_next_token_bitmask"),
    ):
        setattr(cls, name, timed(getattr(cls, name)))
    return spent


def _settle(on_gpu: bool) -> None:
    if on_gpu:
        torch.cuda.synchronize()


def _gpu_step(
    lp: Any, logits: torch.Tensor, busy_ms: float
) -> tuple[float, int, float]:
    """One ``apply()`` on CUDA logits: (seconds to the end of its device
    work, synchronisations it made, host seconds while the device was still
    busy with ``busy_ms`` of earlier work)."""
    import warnings

    torch.cuda.synchronize()
    start, end = (
        torch.cuda.Event(enable_timing=True),
        torch.cuda.Event(enable_timing=True),
    )
    # Earlier work still on the device, as a forward pass would be.
    torch.cuda._sleep(int(busy_ms * 1e-3 * 1.4e9))  # ~busy_ms at ~1.4 GHz
    start.record()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            lp.apply(logits)
            host = time.perf_counter() - t0
    finally:
        torch.cuda.set_sync_debug_mode("default")
    end.record()
    torch.cuda.synchronize()
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return start.elapsed_time(end) * 1e-3, syncs, host


def _ratio(row: dict[str, Any]) -> str:
    """apply / xgrammar, where the median step has argument rows at all."""
    if row["xgrammar_batch_ms"] < 0.01:
        return "—"
    return f"{row['apply_over_xgrammar']:.2f}"


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# The Enforcer at batch sizes 1–512 (per decode step, one run)",
        "",
        (
            f"{result['machine']}; torch threads {result['torch_threads']}; "
            f"vocabulary 163,840 ({result['tokenizer']}); {TOOLS_PER_REQUEST} BFCL "
            f"tools per request; medians over {result['steps']} steps. "
            "Reproduce: `python benchmarks/bench_batch.py --out benchmarks/results`."
        ),
        "",
        (
            "| batch | `apply()` ms | host ms (µs/row) | of which in xgrammar, ms "
            "| tensor ms | slowest / median "
            "| xgrammar batch fill + apply, same argument rows, ms | one `max` pass "
            "ms | apply / xgrammar | rows: text / header / args | requests joined "
            "| stood down |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        mix = r["phase_mix"]
        text = mix.get("TEXT", 0) + mix.get("THINK", 0)
        header = mix.get("HEADER", 0) + mix.get("SECTION", 0)
        args = mix.get("ARGS", 0)
        lines.append(
            f"| {r['batch']} | {r['apply_ms']:.2f} | {r['host_ms']:.2f} "
            f"({r['host_us_per_row']:.1f}) | {r.get('host_xgrammar_ms', 0):.2f} | "
            f"{r['tensor_ms']:.2f} | "
            f"{r['slowest_over_median']:.2f} | {r['xgrammar_batch_ms']:.2f} | "
            f"{r['max_pass_ms']:.2f} | {_ratio(r)} | "
            f"{text:.0%} / {header:.0%} / {args:.0%} | {r.get('joined', 0)} | "
            f"{r['stood_down']} |"
        )
    if any(r.get("cold") for r in result["rows"]):
        lines += [
            "",
            "| batch | grammar waits | waited in all, ms | timed out |",
            "|---|---|---|---|",
            *(
                f"| {r['batch']} | {r.get('grammar_waits', 0)} | "
                f"{r.get('grammar_wait_ms', 0):.1f} | {r.get('grammar_timeouts', 0)} |"
                for r in result["rows"]
            ),
            "",
            (
                "Cold store: the requests that join the batch as rows finish bring "
                "BFCL schemas not compiled yet (a fresh grammar store per batch "
                "size) and call at once (their prose already written), so "
                "compiling runs beside decoding and a call that reaches its "
                "arguments first waits for its grammar (the step's whole batch "
                "with it): the slowest step shows that stall. Reproduce: "
                "`python benchmarks/bench_batch.py --cold --name "
                "enforcer_batch_cold --out benchmarks/results`."
            ),
        ]
    before = result.get("before")
    if before:
        lines += [
            "",
            f"## Before and after ({before['label']})",
            "",
            (
                "| batch | `apply()` ms | host ms | tensor ms | slowest / median "
                "| apply / xgrammar |"
            ),
            "|---|---|---|---|---|---|",
        ]
        old = {r["batch"]: r for r in before["rows"]}
        for r in result["rows"]:
            o = old.get(r["batch"])
            if o is None:
                continue
            cells = [
                f"{o[k]:.2f} → {r[k]:.2f}"
                for k in ("apply_ms", "host_ms", "tensor_ms", "slowest_over_median")
            ]
            cells.append(f"{_ratio(o)} → {_ratio(r)}")
            lines.append(f"| {r['batch']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Host: `apply()` less its tensor part (reading the new tokens, advancing "
            "the machines, xgrammar's bitmask fill for argument rows, the plan). "
            "Tensor: the plan applied to the logits (bans, keep-lists, xgrammar's "
            "bitmask kernel), plus the blocked-token tally on its sampled rows. "
            "The xgrammar column fills and applies bitmasks for the rows in "
            "arguments only, with the Enforcer's own matchers, through xgrammar's "
            "thread pool (—: no argument row in the median step). In xgrammar: "
            "the host time inside xgrammar's matcher calls (building matchers, "
            "accepting tokens, filling bitmasks), the part no Python work of the "
            "Enforcer's can remove. Requests joined: finished rows that took a "
            "new request during the run (its spec read in `update_state`, timed "
            "with the step). At batch 1 and 8 a step costs what its few rows' "
            "phases cost: a row in free text a few microseconds, a row in its "
            "arguments or at a call's start tenths of a millisecond (a bitmask "
            "fill, a matcher built), so the slowest step against a median in "
            "free text is many times the median there (the slowest step's "
            "phases are in the JSON). CPU only: on a GPU the tensor part moves "
            "to the device (one bitmask and one kernel for every enforced row) "
            "and the host part stays."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,8,32,128,256,512")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--name", default="enforcer_batch")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (unverified)")
    parser.add_argument("--busy-ms", type=float, default=20.0)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="requests that join bring uncompiled schemas (a fresh store each)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        help="write the table of an existing result JSON (no measuring)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="an earlier run's JSON, shown beside this one (its 'label' names it)",
    )
    args = parser.parse_args()
    if args.render is not None:
        result = json.loads(args.render.read_text())
        save_results(args.out, args.name, result, _markdown(result))
        return 0
    model = ensure_tinykimi(cache_dir() / "tinykimi")
    tokenizer = AutoTokenizer.from_pretrained(
        model, trust_remote_code=needs_remote_code(model)
    )
    store = GrammarStore.for_hf_tokenizer(tokenizer, VOCAB)
    # As in the engine: vLLM freezes its start-up heap, the Enforcer its
    # tables once built, so full collections skip them.
    gc.freeze()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        if args.cold:
            store.shutdown()
            store = GrammarStore.for_hf_tokenizer(tokenizer, VOCAB)
            gc.freeze()
        row = run_batch(
            store,
            tokenizer,
            size,
            args.steps,
            args.seed,
            args.device,
            args.busy_ms,
            args.cold,
        )
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": torch.get_num_threads(),
        "tokenizer": describe(model),
        "steps": args.steps,
        "rows": rows,
    }
    if args.before is not None:
        result["before"] = json.loads(args.before.read_text())
    save_results(args.out, args.name, result, _markdown(result))
    store.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
