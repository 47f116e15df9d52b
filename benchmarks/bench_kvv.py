# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's vendor verifier, unmodified, against three configurations.

The test-bed model (Moonshot's real tokenizer, K2.5 rules: the prompt opens
``<think>``) is served as stock ``kimi_k2``, stock ``kimi_k2
--tool-strict-level parameter`` and ``kimi_k2_robust`` (with
``--middleware vllm_kimi_tools.api.middleware.KimiApiMiddleware``), each with
the same stand-in in front of the model (``kimi_testbed.standin``) in both
modes: *lazy* (it means to call with ``{}``, so valid arguments are the
server's doing) and *cooperative* (it means a minimal valid instance).
Every suite of the verifier that can run here (``--suites``) runs against
each, in its own environment (``scripts/setup_kvv.sh``); every failure is
put to a cause and a category (``kimi_testbed.kvv.RULES``).

Prints the table; with ``--out DIR`` writes ``kvv_verifier.{json,md}``
(``--render JSON`` redoes the table from a saved result; ``--merge JSON``
keeps a saved result's runs for what this run does not redo). Usage::

    python benchmarks/bench_kvv.py [--configs a,b] [--modes lazy,cooperative]
        [--suites s1,s2] [--max-cases N] [--reuse [--no-run]]
        [--merge SAVED.json] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from results_io import save_results

from kimi_testbed import kvv
from kimi_testbed.k2vv_sim import CONFIGS
from kimi_testbed.paths import cache_dir
from kimi_testbed.standin import MODES
from kimi_testbed.tinykimi import describe, ensure_tinykimi

DEFAULT_CONFIGS = ("stock_default", "stock_strict", "robust")


def run(args: argparse.Namespace) -> dict[str, Any]:
    verifier = kvv.setup()
    cache = cache_dir()
    model = ensure_tinykimi(cache / "tinykimi-k25", template="k25")
    out_dir = cache / "kvv" / "runs"
    runs = []
    for config in args.configs:
        for mode in args.modes:
            start = time.perf_counter()
            suites = list(args.suites)
            if args.reuse:  # the outcomes an earlier run left, read back
                for suite in args.suites:
                    xml = out_dir / f"{config}-{mode}" / f"{suite}.xml"
                    if xml.exists():
                        suites.remove(suite)
                        outcomes = kvv.read_junit(xml)
                        runs.append(_run(config, mode, suite, None, outcomes))
            if not suites or args.no_run:
                continue
            with kvv.start_server(config, mode, model, cache / "logs") as server:
                for suite in suites:
                    extra = ["-n", "4"] if suite.startswith("tool_call") else []
                    if args.max_cases and suite.startswith("tool_call"):
                        extra += ["--max-cases", str(args.max_cases)]
                    t = time.perf_counter()
                    outcomes = kvv.run_suite(
                        verifier,
                        suite,
                        server.base_url,
                        out_dir / f"{config}-{mode}",
                        extra=extra,
                    )
                    wall = round(time.perf_counter() - t, 1)
                    runs.append(_run(config, mode, suite, wall, outcomes))
                    print(
                        f"{config:14} {mode:12} {suite:32} {kvv.tally(outcomes)}",
                        flush=True,
                    )
            print(f"{config} {mode}: {time.perf_counter() - start:.0f} s", flush=True)
    return {
        "benchmark": "kvv_verifier",
        "verifier": "Kimi-Vendor-Verifier pre-flight suites "
        "(../shared/anchors/kvv-verifier, run unmodified)",
        "tokenizer": describe(model),
        "template": "k25",
        "python": platform.python_version(),
        "configs": {c: CONFIGS[c][0] for c in args.configs},
        "extra_args": {c: kvv.EXTRA_ARGS.get(c, []) for c in args.configs},
        "runs": runs,
    }


def _run(
    config: str, mode: str, suite: str, wall: float | None, outcomes: list
) -> dict[str, Any]:
    return {
        "config": config,
        "mode": mode,
        "suite": suite,
        "wall_s": wall,
        "outcomes": kvv.as_dicts(outcomes),
    }


def merge(result: dict[str, Any], saved: dict[str, Any]) -> None:
    """Keep the saved runs this run did not redo (in place), in saved order."""
    redone = {(r["config"], r["mode"], r["suite"]) for r in result["runs"]}
    kept = [
        r for r in saved["runs"] if (r["config"], r["mode"], r["suite"]) not in redone
    ]
    result["runs"] = kept + result["runs"]
    result["configs"] = {**saved["configs"], **result["configs"]}
    result["extra_args"] = {**saved["extra_args"], **result["extra_args"]}
    order = list(DEFAULT_CONFIGS)
    result["runs"].sort(
        key=lambda r: (
            order.index(r["config"]) if r["config"] in order else len(order),
            MODES.index(r["mode"]),
        )
    )
    result["configs"] = dict(
        sorted(
            result["configs"].items(),
            key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order),
        )
    )


def summarize(result: dict[str, Any]) -> None:
    """Per run: the tally and the failures by cause (in place)."""
    for run_ in result["runs"]:
        outcomes = [kvv.Outcome(**o) for o in run_["outcomes"]]
        run_["tally"] = kvv.tally(outcomes)
        causes: Counter[tuple[str, str]] = Counter(
            kvv.classify(o) for o in outcomes if o.outcome in ("failed", "error")
        )
        run_["failures"] = [
            {"cause": cause, "category": category, "count": n}
            for (cause, category), n in causes.most_common()
        ]


def render(result: dict[str, Any]) -> str:
    configs = list(result["configs"])
    modes = sorted({r["mode"] for r in result["runs"]}, key=MODES.index)
    suites = list(dict.fromkeys(r["suite"] for r in result["runs"]))
    cell = {(r["config"], r["mode"], r["suite"]): r for r in result["runs"]}
    lines = [
        "# Moonshot's vendor verifier, unmodified: stock vs kimi_k2_robust",
        "",
        (
            f"Test-bed model, {result['tokenizer']}, K2.5 rules; the verifier's "
            f"suites on Python {result['python']}. Cells: passed / failed / "
            "skipped. `bash scripts/dev.sh kvv`."
        ),
        "",
    ]
    for mode in modes:
        lines += [
            f"## Stand-in: {mode}",
            "",
            "| suite | " + " | ".join(result["configs"][c] for c in configs) + " |",
            "|---|" + "---|" * len(configs),
        ]
        for suite in suites:
            row = []
            for c in configs:
                r = cell.get((c, mode, suite))
                t = r["tally"] if r else None
                row.append(
                    f"{t['passed']} / {t['failed'] + t['error']} / {t['skipped']}"
                    if t
                    else "-"
                )
            lines.append(f"| `{suite}` | " + " | ".join(row) + " |")
        lines.append("")
    lines += [
        "## Failures by cause",
        "",
        "| configuration | stand-in | suite | cause | category | tests |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        for f in r["failures"]:
            lines.append(
                f"| {result['configs'][r['config']]} | {r['mode']} | "
                f"`{r['suite']}` | {f['cause']} | {f['category'] or '?'} | "
                f"{f['count']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--suites", default=",".join(kvv.SUITES))
    ap.add_argument("--max-cases", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="read the outcomes of suites an earlier run finished "
        "($KIMI_TOOLS_CACHE/kvv/runs) instead of running them again",
    )
    ap.add_argument(
        "--no-run",
        action="store_true",
        help="with --reuse: run nothing; suites without outcomes show as -",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        default=None,
        help="a saved kvv_verifier.json whose runs stand for the "
        "configurations, modes and suites this run does not redo",
    )
    args = ap.parse_args()
    if args.render is not None:
        result = json.loads(args.render.read_text())
    else:
        if not kvv.available():
            print("the verifier or the walle cases are not beside the checkout")
            return 2
        args.configs = args.configs.split(",")
        args.modes = args.modes.split(",")
        args.suites = args.suites.split(",")
        result = run(args)
        if args.merge is not None:
            merge(result, json.loads(args.merge.read_text()))
    summarize(result)
    save_results(args.out, "kvv_verifier", result, render(result))
    unclassified = sum(
        f["count"] for r in result["runs"] for f in r["failures"] if not f["category"]
    )
    return 1 if unclassified else 0


if __name__ == "__main__":
    sys.exit(main())
