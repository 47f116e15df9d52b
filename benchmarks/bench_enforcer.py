# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer vs xgrammar's builtin ``kimi`` structural tag, side by side.

The builtin tag is what ``--tool-strict-level parameter`` compiles (one
grammar per tool set). Both run on the test bed's 163,840-token vocabulary
(Kimi's size and special-token ids) in the same process:

1. Cold compile for 1/5/20/128 realistic tools (BFCL definitions; every
   fourth tool also gets ``maxLength`` strings, as real tool sets have),
   each side with a fresh compiler; then the same set again (cached).
2. Per-step mask cost over one realistic output (free text, then a call to a
   tool with nested objects, dates, emails and a ``maxLength`` title):
   the Enforcer's whole directive (ban list / short list / grammar + special
   ids + length bounds) vs the builtin matcher's bitmask fill.

Usage::

    python benchmarks/bench_enforcer.py [--sizes 1,5,20,128] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import xgrammar as xgr
from results_io import save_results
from transformers import AutoTokenizer

from kimi_testbed.corpora import bfcl_functions
from kimi_testbed.paths import cache_dir
from kimi_testbed.tinykimi import (
    describe,
    ensure_tinykimi,
    needs_remote_code,
)
from vllm_kimi_tools.enforcer.admission import (
    build_spec,
)
from vllm_kimi_tools.enforcer.grammars import GrammarStore
from vllm_kimi_tools.enforcer.machine import RequestEnforcer
from vllm_kimi_tools.tools import DeclaredTool

VOCAB = 163_840
CALENDAR = {
    "name": "create_event",
    "parameters": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 120},
            "start": {"type": "string", "format": "date-time"},
            "attendees": {"type": "array", "items": {"type": "string"}},
            "location": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "room": {"type": "integer", "minimum": 1, "maximum": 999},
                },
                "required": ["name"],
            },
            "reminder": {"enum": ["none", "10m", "1h", "1d"]},
        },
        "required": ["title", "start"],
    },
}
OUTPUT = (
    "Sure, I will put that meeting in the calendar for next week and invite "
    "the whole team so that everybody can attend the planning session."
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.create_event:0"
    '<|tool_call_argument_begin|>{"title": "Quarterly planning with the '
    'platform team", "start": "2026-11-30T10:00:00Z", "attendees": '
    '["ana@example.com", "bo@example.com", "chen@example.com"], "location": '
    '{"name": "Main office, 4th floor", "room": 412}, "reminder": "1h"}'
    "<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
)


def realistic_tools(n: int) -> list[dict[str, Any]]:
    """``n`` tools: the calendar tool plus BFCL definitions (every 4th with
    ``maxLength`` 120/200 on its string properties)."""
    tools = [CALENDAR]
    seen = {CALENDAR["name"]}
    for fn in bfcl_functions():
        if len(tools) >= n:
            break
        name = fn["name"].replace(".", "_")
        if name in seen:
            continue
        seen.add(name)
        params = json.loads(json.dumps(fn.get("parameters") or {}))
        if len(tools) % 4 == 0:
            for prop in (params.get("properties") or {}).values():
                if isinstance(prop, dict) and prop.get("type") in ("string", "String"):
                    prop["maxLength"] = 120 if len(tools) % 8 == 0 else 200
        tools.append({"name": name, "parameters": params})
    return tools[:n]


def openai_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        from vllm_kimi_tools.enforcer.schemas import prepare_schema

        # The builtin needs standard JSON Schema: give it our normalised one
        # (lengths kept), so both sides enforce the same constraints.
        schema = prepare_schema(t["parameters"]).schema
        out.append(
            {
                "type": "function",
                "function": {"name": t["name"], "parameters": schema, "strict": True},
            }
        )
    return out


def builtin_tag_json(tools: list[dict[str, Any]]) -> str:
    tag = xgr.get_model_structural_tag(
        "kimi", tools=openai_tools(tools), tool_choice="auto", reasoning="disabled"
    )
    return tag.model_dump_json()


def compile_ours(info, table, tools, store=None) -> tuple[float, GrammarStore, Any]:
    spec, _ = build_spec(
        [DeclaredTool(t["name"], t["parameters"]) for t in tools], first_index=0
    )
    if store is None:
        store = GrammarStore(table, info, threads=2)
    start = time.perf_counter()
    for tool in spec.tools:
        store.get(tool.grammar)
    return time.perf_counter() - start, store, spec


def compile_builtin(info, tag_json, compiler=None):
    if compiler is None:
        compiler = xgr.GrammarCompiler(info, max_threads=2)
    start = time.perf_counter()
    grammar = compiler.compile_structural_tag(tag_json)
    return time.perf_counter() - start, compiler, grammar


def step_costs(tokenizer, store, spec, builtin_grammar) -> dict[str, Any]:
    ids = tokenizer.encode(OUTPUT, add_special_tokens=False)
    section_at = ids.index(
        tokenizer.convert_tokens_to_ids("<|tool_calls_section_begin|>")
    )
    arg_at = ids.index(tokenizer.convert_tokens_to_ids("<|tool_call_argument_begin|>"))
    ours, builtin = [], []
    for _ in range(5):
        enforcer = RequestEnforcer(spec, store)
        matcher = xgr.GrammarMatcher(builtin_grammar)
        row = np.full(VOCAB // 32, -1, dtype=np.int32)
        bitmask = xgr.allocate_token_bitmask(1, VOCAB)
        o, b = [], []
        for token in ids:
            t0 = time.perf_counter()
            enforcer.directive(row)
            t1 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            t2 = time.perf_counter()
            o.append((t1 - t0) * 1e6)
            b.append((t2 - t1) * 1e6)
            assert enforcer.accept(token), enforcer.off_reason
            assert matcher.accept_token(token)
        ours.append(o)
        builtin.append(b)
    ours_med = [statistics.median(col) for col in zip(*ours)]
    builtin_med = [statistics.median(col) for col in zip(*builtin)]

    def summary(costs: list[float]) -> dict[str, float]:
        return {
            "p50_us": round(statistics.median(costs), 1),
            "p90_us": round(float(np.percentile(costs, 90)), 1),
            "mean_us": round(statistics.fmean(costs), 1),
            "max_us": round(max(costs), 1),
        }

    args_slice = slice(arg_at + 1, len(ids) - 3)
    return {
        "tokens": len(ids),
        "free_text": {
            "ours": summary(ours_med[:section_at]),
            "builtin": summary(builtin_med[:section_at]),
        },
        "arguments": {
            "ours": summary(ours_med[args_slice]),
            "builtin": summary(builtin_med[args_slice]),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,5,20,128")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = ensure_tinykimi(cache_dir() / "tinykimi")
    print("tokenizer:", describe(model))
    tokenizer = AutoTokenizer.from_pretrained(
        model, trust_remote_code=needs_remote_code(model)
    )
    base = GrammarStore.for_hf_tokenizer(tokenizer, VOCAB, threads=2)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=VOCAB)
    rows = []
    for n in sizes:
        tools = realistic_tools(n)
        n_len = sum('"maxLength"' in json.dumps(t["parameters"]) for t in tools)
        cold_ours, store, spec = compile_ours(info, base.table, tools)
        warm_ours, _, _ = compile_ours(info, base.table, tools, store)
        tag = builtin_tag_json(tools)
        cold_b, compiler, grammar = compile_builtin(info, tag)
        warm_b, _, _ = compile_builtin(info, tag, compiler)
        row = {
            "tools": n,
            "tools_with_maxLength": n_len,
            "cold_compile_s": {
                "ours": round(cold_ours, 3),
                "builtin": round(cold_b, 3),
            },
            "cached_compile_ms": {
                "ours": round(warm_ours * 1e3, 3),
                "builtin": round(warm_b * 1e3, 3),
            },
            "cold_ratio_ours_over_builtin": round(cold_ours / cold_b, 3),
            "steps": step_costs(tokenizer, store, spec, grammar),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        store.shutdown()
    result = {
        "benchmark": "enforcer_component",
        "vocab_size": VOCAB,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": sys.version.split()[0],
        "xgrammar_threads": 2,
        "rows": rows,
    }
    save_results(args.out, "enforcer_component", result, render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Enforcer vs xgrammar builtin `kimi` tag (component, one run)",
        "",
        (
            f"163,840-token vocabulary; {result['machine']}; xgrammar threads 2. "
            "Cold = fresh compiler; cached = the same tools again. Step costs "
            "are medians over 5 passes of one realistic output."
        ),
        "",
        (
            "| tools (maxLength) | cold compile ours / builtin (ratio) "
            "| cached ours / builtin | free text p50 µs ours / builtin "
            "| arguments p50 (p90) µs ours / builtin |"
        ),
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        c, w, s = r["cold_compile_s"], r["cached_compile_ms"], r["steps"]
        ft, ar = s["free_text"], s["arguments"]
        lines.append(
            f"| {r['tools']} ({r['tools_with_maxLength']}) "
            f"| {c['ours']:.2f} s / {c['builtin']:.2f} s "
            f"({r['cold_ratio_ours_over_builtin']:.3f}) "
            f"| {w['ours']:.3f} ms / {w['builtin']:.3f} ms "
            f"| {ft['ours']['p50_us']} / {ft['builtin']['p50_us']} "
            f"| {ar['ours']['p50_us']} ({ar['ours']['p90_us']}) / "
            f"{ar['builtin']['p50_us']} ({ar['builtin']['p90_us']}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
