# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""kimi_k2_robust vs vLLM's built-in kimi_k2 parser, side by side, one run.

Both parsers are built by vLLM's own ``ParserManager`` (the composition the
server uses) over the test-bed tokenizer (Kimi's real special-token ids) and
fed token by token through ``Parser.parse_delta``, as ``vllm serve`` streams.

1. Correctness: the same Kimi outputs (every robustness case) through both,
   streaming and non-streaming, scored against the expected calls/content.
   Each request goes through the parser's ``adjust_request`` as in vLLM's
   serving layer; the Enforcer is off (``KIMI_TOOLS_ENFORCER=0``): the
   parser alone is measured on outputs the Enforcer would not let through.
2. Speed: long outputs (1k..16k tokens) streamed token by token; prints the
   time of each parser, the ratio, and µs per token (flat = linear).

Usage::

    python benchmarks/bench_parser.py [--out benchmarks/results]
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

from results_io import save_results

from kimi_testbed.conversations import WEATHER_ROUND_TRIP
from kimi_testbed.paths import cache_dir
from kimi_testbed.tinykimi import describe, ensure_tinykimi, needs_remote_code
from kimi_testbed.wire import ARG, CALL, END, SEC, SEC_END, call, openai_tool, section
from vllm_kimi_tools import register

PARSERS = ("kimi_k2", "kimi_k2_robust")
TOOLS = [
    openai_tool(
        "get_weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    ),
    openai_tool(
        "write_file",
        {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    ),
]
# One earlier call in the conversation: the next canonical index is 1.
HISTORY = [*WEATHER_ROUND_TRIP, {"role": "user", "content": "and Tokyo?"}]
W = {"city": "Tokyo"}


# name -> (model output, expected content, expected [(name, args)])
CASES: dict[str, tuple[str, str | None, list[tuple[str, Any]]]] = {
    "canonical": (
        "Sure." + section(call("functions.get_weather:1", W)),
        "Sure.",
        [("get_weather", W)],
    ),
    "id without functions.": (
        section(call("get_weather:1", W)),
        None,
        [("get_weather", W)],
    ),
    "id functions_x_1": (
        section(call("functions_get_weather_1", W)),
        None,
        [("get_weather", W)],
    ),
    "opaque id call_…": (
        section(call("call_9f2c", {"path": "a", "content": "b"})),
        None,
        [("write_file", {"path": "a", "content": "b"})],
    ),
    "model reuses index 0": (
        section(call("functions.get_weather:0", W)),
        None,
        [("get_weather", W)],
    ),
    "bare call, no section": (
        "Hi" + call("functions.get_weather:1", W),
        "Hi",
        [("get_weather", W)],
    ),
    "missing section end": (
        SEC + call("functions.get_weather:1", W),
        None,
        [("get_weather", W)],
    ),
    "text after section": (
        section(call("functions.get_weather:1", W)) + "Done.",
        "Done.",
        [("get_weather", W)],
    ),
    "string-encoded args": (
        section(call("functions.get_weather:1", json.dumps(json.dumps(W)))),
        None,
        [("get_weather", W)],
    ),
    "undeclared tool": (section(call("functions.img_gen:1", {"p": "cat"})), None, []),
    "truncated arguments": (
        "Wait." + SEC + CALL + "functions.get_weather:1" + ARG + '{"city": "To',
        "Wait.",
        [],
    ),
    "invalid JSON": (
        section(call("functions.get_weather:1", '{"city": Tokyo}')),
        None,
        [],
    ),
    "marker inside string": (
        section(
            call(
                "functions.write_file:1",
                {"path": "a.md", "content": "ends with " + END},
            )
        ),
        None,
        [("write_file", {"path": "a.md", "content": "ends with " + END})],
    ),
    "two calls": (
        section(
            call("functions.get_weather:1", W),
            call("functions.get_weather:2", {"city": "Rome"}),
        ),
        None,
        [("get_weather", W), ("get_weather", {"city": "Rome"})],
    ),
}


def _load(model_dir: Path) -> tuple[Any, dict[str, Any]]:
    from vllm.parser.parser_manager import ParserManager
    from vllm.tokenizers import get_tokenizer

    register()
    # Moonshot's real tokenizer is remote code, loaded as vllm serve
    # --trust-remote-code loads it.
    tokenizer = get_tokenizer(
        str(model_dir), trust_remote_code=needs_remote_code(model_dir)
    )
    classes = {
        name: ParserManager.get_parser(
            tool_parser_name=name, enable_auto_tools=True, tokenizer=tokenizer
        )
        for name in PARSERS
    }
    return tokenizer, classes


def _request() -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    return ChatCompletionRequest(model="m", messages=HISTORY, tools=TOOLS)


def _token_deltas(tokenizer: Any, text: str) -> list[tuple[str, list[int]]]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = [(tokenizer.decode([i], skip_special_tokens=False), [i]) for i in ids]
    assert "".join(d for d, _ in deltas) == text, "benchmark text must be ASCII"
    return deltas


def _run_stream(cls: Any, tokenizer: Any, deltas: list) -> dict[str, Any]:
    request = _request()
    parser = cls(tokenizer, request.tools)
    request = parser.adjust_request(request)  # as vLLM's serving layer does
    content, calls = "", {}
    for n, (text, ids) in enumerate(deltas):
        delta = parser.parse_delta(
            text, ids, request, prompt_token_ids=[], finished=n == len(deltas) - 1
        )
        if delta is None:
            continue
        content += delta.content or ""
        for tc in delta.tool_calls:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            slot["id"] = slot["id"] or tc.id
            if tc.function is not None:
                slot["name"] = slot["name"] or tc.function.name
                slot["args"] += tc.function.arguments or ""
    return {
        "content": content or None,
        "calls": [
            (calls[i]["id"], calls[i]["name"], calls[i]["args"]) for i in sorted(calls)
        ],
    }


def _run_whole(cls: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    request = _request()
    parser = cls(tokenizer, request.tools)
    request = parser.adjust_request(request)  # as vLLM's serving layer does
    _, content, calls = parser.parse(text, request, enable_auto_tools=True)
    return {
        "content": content or None,
        "calls": [(c.id, c.name, c.arguments) for c in calls or []],
    }


def _score(result: dict[str, Any], content: str | None, calls: list) -> dict:
    got = []
    for _, name, args in result["calls"]:
        try:
            got.append((name, json.loads(args)))
        except (TypeError, ValueError):
            got.append((name, "<invalid JSON>"))
    ids = [i for i, _, _ in result["calls"]]
    canonical = [
        f"functions.{n}:{1 + k}" for k, (_, n, _) in enumerate(result["calls"])
    ]
    leaked = any(m in (result["content"] or "") for m in (SEC, CALL, ARG, END, SEC_END))
    return {
        "calls_ok": got == calls,
        "content_ok": (result["content"] or None) == content and not leaked,
        "ids_ok": ids == canonical,
        "ok": got == calls
        and (result["content"] or None) == content
        and not leaked
        and ids == canonical,
        "got": result,
    }


def correctness(tokenizer: Any, classes: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for case, (text, content, calls) in CASES.items():
        deltas = _token_deltas(tokenizer, text)
        row = {}
        for name, cls in classes.items():
            whole = _score(_run_whole(cls, tokenizer, text), content, calls)
            stream = _score(_run_stream(cls, tokenizer, deltas), content, calls)
            row[name] = {"non_streaming": whole, "streaming": stream}
        table[case] = row
    return table


def _long_output(n_tokens_target: int, tokenizer: Any) -> str:
    parts, text = [], ""
    k = 0
    while True:
        body = " ".join(f"line {k}-{j} of the report" for j in range(40))
        parts.append(
            call(
                f"functions.write_file:{1 + k}", {"path": f"f{k}.txt", "content": body}
            )
        )
        k += 1
        text = "Writing the files." + section(*parts)
        if len(tokenizer.encode(text, add_special_tokens=False)) >= n_tokens_target:
            return text


def speed(tokenizer: Any, classes: dict[str, Any], repeats: int) -> list[dict]:
    rows = []
    for target in (1000, 4000, 16000):
        deltas = _token_deltas(tokenizer, _long_output(target, tokenizer))
        row: dict[str, Any] = {"tokens": len(deltas)}
        for name, cls in classes.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                _run_stream(cls, tokenizer, deltas)
                times.append(time.perf_counter() - t0)
            best = min(times)
            row[name] = {
                "seconds_min": best,
                "seconds_median": statistics.median(times),
                "us_per_token": best / len(deltas) * 1e6,
            }
        row["ratio_robust_over_builtin"] = (
            row["kimi_k2_robust"]["seconds_min"] / row["kimi_k2"]["seconds_min"]
        )
        rows.append(row)
    return rows


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Parser benchmark: `kimi_k2_robust` vs vLLM 0.32 built-in `kimi_k2`",
        "",
        (
            f"Measured {report['date']} on {report['machine']}, vLLM "
            f"{report['vllm']}, tokenizer: {report['tokenizer']}; both parsers "
            "composed by vLLM's `ParserManager`, each request through its "
            "`adjust_request` (Enforcer off: the parser alone), and fed token by "
            "token through `Parser.parse_delta` (streaming) or `Parser.parse` "
            "(non-streaming). Reproduce: `bash scripts/dev.sh bench`."
        ),
        "",
        (
            "## Correctness (stream / non-stream; ✓ = calls, content and ids "
            "as expected, "
            "✗ names what was wrong)"
        ),
        "",
        "| case | kimi_k2 (built-in) | kimi_k2_robust |",
        "|---|---|---|",
    ]
    for case, row in report["correctness"].items():
        cells = []
        for name in PARSERS:
            cell = []
            for mode in ("streaming", "non_streaming"):
                r = row[name][mode]
                bad = [k[:-3] for k in ("calls_ok", "content_ok", "ids_ok") if not r[k]]
                cell.append("✓" if r["ok"] else "✗ " + ",".join(bad))
            cells.append(" / ".join(cell))
        lines.append(f"| {case} | {cells[0]} | {cells[1]} |")
    totals = report["correctness_totals"]
    lines += [
        f"| **passed** | {totals['kimi_k2']} | {totals['kimi_k2_robust']} |",
        "",
        f"## Streaming speed (token by token, best of {report['repeats']} runs)",
        "",
        (
            "| output tokens | kimi_k2 s | kimi_k2_robust s | ratio robust/built-in "
            "| built-in µs/token | robust µs/token |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for row in report["speed"]:
        b, r = row["kimi_k2"], row["kimi_k2_robust"]
        lines.append(
            f"| {row['tokens']} | {b['seconds_min']:.3f} | {r['seconds_min']:.3f} "
            f"| {row['ratio_robust_over_builtin']:.2f} | {b['us_per_token']:.1f} "
            f"| {r['us_per_token']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["KIMI_TOOLS_ENFORCER"] = "0"
    model_dir = ensure_tinykimi(cache_dir() / "tinykimi")
    tokenizer, classes = _load(model_dir)
    import vllm

    table = correctness(tokenizer, classes)
    totals = {
        name: sum(
            row[name]["streaming"]["ok"] + row[name]["non_streaming"]["ok"]
            for row in table.values()
        )
        for name in PARSERS
    }
    totals = {k: f"{v}/{2 * len(table)}" for k, v in totals.items()}
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "tokenizer": describe(model_dir),
        "vllm": vllm.__version__,
        "repeats": args.repeats,
        "correctness": table,
        "correctness_totals": totals,
        "speed": speed(tokenizer, classes, args.repeats),
    }
    save_results(args.out, "parser_benchmark", report, _markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
