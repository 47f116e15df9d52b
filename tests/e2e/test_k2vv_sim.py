# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The K2VV simulation, CI size, through real ``vllm serve`` (CPU).

One variant of every failure mode plus 16 BFCL ground-truth calls, on
``kimi_k2_robust`` and on stock ``kimi_k2`` (default flags). The gate:
``kimi_k2_robust`` answers every scenario cleanly (100% K2VV
schema_accuracy, no correct call altered, no lost call, no bad id, no
leaked markup); the stock failures must still show, or the suite would no
longer be measuring anything. The full run: ``bash scripts/dev.sh k2vv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kimi_testbed.k2vv_sim import Simulation, start_server, summarize
from kimi_testbed.scenarios import suite
from kimi_testbed.tinykimi import tokenizer_kind

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ci_runs(tinykimi: Path, cache_dir: Path) -> dict[str, tuple[list, dict[str, Any]]]:
    scenarios = suite("ci")
    runs = {}
    for config in ("robust", "stock_default"):
        with start_server(config, tinykimi, cache_dir, cache_dir / "logs") as server:
            results, wall = Simulation(server).run_all(scenarios, concurrency=8)
        runs[config] = (results, summarize(results, wall))
    return runs


def test_robust_passes_every_scenario(ci_runs) -> None:
    results, summary = ci_runs["robust"]
    failed = [
        (r.scenario, r.failures, r.details, r.message) for r in results if not r.ok
    ]
    assert not failed
    assert summary["k2vv"]["schema_accuracy"] == 1.0
    assert summary["correct"] == {"n": 16, "altered": 0, "failed": 0}
    # Every scenario that intends a call (all but the truncated one) got one.
    assert summary["k2vv"]["finish_tool_calls"] == len(results) - 1


def test_stock_failures_are_reproduced(ci_runs, tinykimi) -> None:
    results, summary = ci_runs["stock_default"]
    assert summary["k2vv"]["schema_accuracy"] < 0.9
    failed = {r.category: r.failures for r in results if not r.ok}
    assert "schema error" in failed["undeclared tool (from history)"]
    assert "schema error" in failed["wrong types"]
    assert "schema error" in failed["string-encoded arguments"]
    assert "call lost" in failed["non-canonical id (call_…)"]
    assert "bad id" in failed["non-canonical id (search:N)"]
    assert "bad id" in failed["duplicate ids"]
    altered = summary["correct"]["altered"]
    if tokenizer_kind(tinykimi) == "real":
        # Moonshot's slow tokenizer: stock's detokenizer puts spaces around
        # every marker, so correct calls come back with altered content.
        assert altered > 0
        contents = [(r.message or {}).get("content") or "" for r in results]
        assert any(c.startswith(" ") and c.strip() for c in contents)
    else:  # the synthetic fast tokenizer: only the plugin differs
        assert altered == 0
