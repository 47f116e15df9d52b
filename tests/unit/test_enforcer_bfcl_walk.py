# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""BFCL's valid calls, tokenized by Moonshot's real tokenizer, walked through
the Enforcer: every refused token must be explained by a documented rule
(``benchmarks/walk_bfcl.py`` walks them all; this is its CI-sized sample)."""

from __future__ import annotations

import pytest

from kimi_testbed.walk import RULES, walk_calls

pytest.importorskip("xgrammar")
pytest.importorskip("bfcl_eval")

CALLS = 200
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "when": {"type": "string", "format": "date"},
        "unit": {"type": "string", "maxLength": 8},
    },
    "required": ["city"],
}


def _sample(n_calls: int) -> list:
    from kimi_testbed.corpora import bfcl_cases

    cases = list(bfcl_cases())
    picked, calls = [], 0
    for case in cases[::7]:  # every category, parallel calls included
        picked.append(case)
        calls += len(case.calls)
        if calls >= n_calls:
            break
    return picked


def test_bfcl_calls_have_no_unexplained_block(real_grammar_store, real_kimi_tokenizer):
    cases = _sample(CALLS)
    walked = accepted = 0
    unexplained = []
    for case in cases:
        tools = {t["function"]["name"]: t["function"]["parameters"] for t in case.tools}
        result = walk_calls(real_grammar_store, real_kimi_tokenizer, tools, case.calls)
        walked += len(case.calls)
        accepted += result.calls_done
        if result.block is not None:
            assert result.block.rule in RULES
            if result.block.rule == "unexplained":
                unexplained.append((case.id, result.block))
    assert walked >= CALLS
    assert not unexplained, unexplained[:3]
    assert accepted >= 0.98 * walked


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ({"city": "Oslo", "days": 3}, None),
        ({"city": "Oslo", "unit": "celsius"}, None),
        ({"city": "Oslo", "country": "NO"}, "no-extra-keys"),
        ({"days": 3, "city": "Oslo"}, "declared-order"),
        ({"city": "Oslo", "days": 3.0}, "integer-no-fraction"),
        ({"city": "Oslo", "when": "tomorrow"}, "format"),
        ({"city": "Oslo", "unit": ""}, "quote-in-bounded-tool"),  # b' ""'
        # Not valid for the schema: the walk does not explain it away.
        ({"days": 3}, "unexplained"),
        ({"city": "Oslo", "unit": "kelvin-ish"}, "unexplained"),
    ],
)
def test_blocks_are_named_by_their_rule(
    real_grammar_store, real_kimi_tokenizer, args, rule
) -> None:
    result = walk_calls(
        real_grammar_store,
        real_kimi_tokenizer,
        {"get_weather": WEATHER},
        [("get_weather", args)],
    )
    assert (result.block.rule if result.block else None) == rule, result.block
    assert (result.calls_done == 1) is (rule is None)
