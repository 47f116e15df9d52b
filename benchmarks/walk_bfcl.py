# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Walk BFCL's valid calls, tokenized by Moonshot's real tokenizer, through
the Enforcer, and explain every token it refuses.

Each BFCL case (``kimi_testbed.corpora.bfcl_cases``: the first
ground-truth answer, keys in declared order, valid per ``jsonschema``) is
written as a Kimi model writes its calls::

    <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
    <|tool_call_argument_begin|>{"a": 1}<|tool_call_end|>...
    <|tool_calls_section_end|><|im_end|>

tokenized with the real tokenizer and fed token by token to a
``RequestEnforcer`` for the case's declared tools: each token must be allowed
by the directive before it is accepted. A refused token is classified by the
documented rule behind it (``kimi_testbed.walk.RULES``); the
target is 0 unexplained blocks.

Usage::

    python benchmarks/walk_bfcl.py [--limit N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
from results_io import save_results

from kimi_testbed.corpora import bfcl_cases
from kimi_testbed.walk import RULES, call_text, walk_calls
from vllm_kimi_tools.enforcer.grammars import GrammarStore

VOCAB = 163_840
REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO.parent / "shared" / "anchors" / "kimi" / "tokenizer-k25"
NAME = "enforcer_bfcl_walk"
# The bound the "bounded" pass gives every string (BFCL declares none).
MAX_LENGTH = 512


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def with_length_bounds(node: Any, bound: int = MAX_LENGTH) -> Any:
    """``node`` with ``maxLength: bound`` on every string schema lacking one."""
    if isinstance(node, list):
        return [with_length_bounds(n, bound) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: with_length_bounds(v, bound) for k, v in node.items()}
    types = out.get("type")
    if (types == "string" or (isinstance(types, list) and "string" in types)) and (
        "maxLength" not in out
    ):
        out["maxLength"] = bound
    return out


def walk_cases(
    store: GrammarStore, tokenizer: Any, cases: list[Any], bounded: bool = False
) -> dict[str, Any]:
    """Walk ``cases``; counts, blocks by rule and every unexplained block.

    ``bounded``: every string gets ``maxLength`` (cases it would make invalid
    are left out), so the length and quote masks are on in every tool.
    """
    rules: Counter[str] = Counter()
    masks: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    walked = calls = tokens = accepted_calls = skipped = 0
    for case in cases:
        tools = {t["function"]["name"]: t["function"]["parameters"] for t in case.tools}
        if bounded:
            tools = {name: with_length_bounds(p) for name, p in tools.items()}
            if not all(
                jsonschema.Draft202012Validator(tools[name]).is_valid(args)
                for name, args in case.calls
            ):
                skipped += 1
                continue
        try:
            result = walk_calls(store, tokenizer, tools, case.calls)
        except ValueError:
            skipped += 1  # not round-tripped by the tokenizer, or refused
            continue
        walked += 1
        calls += len(case.calls)
        tokens += result.checked
        block = result.block
        if block is None:
            accepted_calls += len(case.calls)
            continue
        accepted_calls += result.calls_done
        rules[block.rule] += 1
        masks["+".join(block.masks) or block.phase] += 1
        kept = examples.setdefault(block.rule, [])
        if len(kept) < (50 if block.rule == "unexplained" else 5):
            ids = tokenizer.encode(call_text(case.calls), add_special_tokens=False)
            kept.append(
                {
                    "case": case.id,
                    "token": block.token,
                    "piece": block.piece.decode("utf-8", "replace"),
                    "masks": list(block.masks),
                    "phase": block.phase,
                    "where": block.where,
                    "path": list(block.path),
                    "before": tokenizer.decode(ids[: block.index])[-60:],
                }
            )
    return {
        "cases": walked,
        "calls": calls,
        "calls_accepted": accepted_calls,
        "tokens_checked": tokens,
        "skipped_cases": skipped,
        "blocked_cases": sum(rules.values()),
        "blocks_by_rule": dict(rules.most_common()),
        "blocks_by_mask": dict(masks.most_common()),
        "unexplained": rules.get("unexplained", 0),
        "examples": examples,
    }


PASSES = {
    "declared": "the tools as BFCL declares them",
    "bounded": f"every string given `maxLength: {MAX_LENGTH}` (length and quote "
    "masks on in every tool)",
}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Enforcer: BFCL's valid calls walked with Moonshot's real tokenizer",
        "",
        (
            f"Run {result['date']} on {result['machine']}; "
            f"`python benchmarks/walk_bfcl.py{result['args']}` "
            f"({result['seconds']:.0f} s)."
        ),
        "",
        "Each case's ground-truth calls, written as a Kimi model writes them and",
        "tokenized by the real tokenizer, go token by token through the Enforcer",
        "for the case's declared tools; a token it refuses is a *block*, named by",
        "the rule behind it (docs/enforcer.md). Target: 0 unexplained.",
        "",
        "| | " + " | ".join(PASSES) + " |",
        "|---|" + "---:|" * len(PASSES),
    ]
    rows = [
        ("cases walked", "cases"),
        ("calls walked", "calls"),
        ("calls accepted to the end of the call", "calls_accepted"),
        ("tokens checked", "tokens_checked"),
        ("cases left out (see below)", "skipped_cases"),
        ("cases with a block", "blocked_cases"),
        ("**unexplained blocks**", "unexplained"),
    ]
    for label, key in rows:
        cells = " | ".join(f"{result[p][key]:,}" for p in PASSES)
        lines.append(f"| {label} | {cells} |")
    lines += [
        "",
        "Passes: "
        + "; ".join(f"**{name}**: {what}" for name, what in PASSES.items())
        + ". Left out: cases the tokenizer does not round-trip, or (bounded) "
        "whose values the added bound would make invalid.",
        "",
        "| rule | " + " | ".join(PASSES) + " | what it means |",
        "|---|" + "---:|" * len(PASSES) + "---|",
    ]
    seen = [r for p in PASSES for r in result[p]["blocks_by_rule"]]
    for rule in dict.fromkeys(seen):
        cells = " | ".join(
            str(result[p]["blocks_by_rule"].get(rule, 0)) for p in PASSES
        )
        lines.append(f"| `{rule}` | {cells} | {RULES[rule]} |")
    if not seen:
        lines.append("| (none) | " + " | ".join("0" for _ in PASSES) + " | |")
    lines += ["", "First example of each rule:", ""]
    for name in PASSES:
        for rule, kept in result[name]["examples"].items():
            ex = kept[0]
            lines.append(
                f"- {name}, `{rule}`: {ex['case']}, token {ex['piece']!r} after "
                f"`{ex['before'][-40:]!r}` at {ex['path']} ({ex['where']})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="cases to walk")
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    if not (args.tokenizer / "tiktoken.model").exists():
        print(f"Moonshot's tokenizer is not at {args.tokenizer}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    store = GrammarStore.for_hf_tokenizer(tokenizer, VOCAB)
    cases = list(bfcl_cases())[: args.limit]
    result: dict[str, Any] = {}
    try:
        for name in PASSES:
            result[name] = walk_cases(store, tokenizer, cases, name == "bounded")
    finally:
        store.shutdown()
    shown = f" --limit {args.limit}" if args.limit else ""
    result.update(
        seconds=time.perf_counter() - start,
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
        args=shown,
        grammar_compiles=store.stats.compiles,
        grammar_failures=store.stats.failures,
    )
    save_results(args.out, NAME, result, markdown(result))
    return 1 if any(result[name]["unexplained"] for name in PASSES) else 0


if __name__ == "__main__":
    sys.exit(main())
