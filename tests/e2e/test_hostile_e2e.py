# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Hostile inputs and a soak, CI size, through real ``vllm serve`` (CPU).

* Hostile: the CI cases of ``testbed/kimi_testbed/hostile.py`` (each kind
  of input the hostile-input report saw break the server, and the ones it
  saw handled well), each sent once to a ``kimi_k2_robust`` server, then one
  ordinary request. Targets: no engine crash, no hang, no 5xx, and every
  case passes (a 4xx that says why, or a 200 with declared, schema-valid,
  canonically numbered calls, and a call where the model intended one, or
  the case's documented degrade, seen as a rise of its counter).
* Soak: three identical rounds of 50 requests at concurrency 50 on one
  server (BFCL tools, correct and incorrect intentions, streamed and not,
  20 % of the clients closing mid-stream, a SIGSTOP/SIGCONT of the server
  mid-round). Targets: no 5xx, no timeout, no invalid call, the server
  serving afterwards, peak RSS growth under 5 % between the last two rounds
  (the first warms up: grammars compile, allocators settle).

The full runs: ``python benchmarks/bench_hostile.py --out benchmarks/results``
and ``python benchmarks/bench_soak.py --out benchmarks/results``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psutil")

from kimi_testbed.hostile import cases  # noqa: E402
from kimi_testbed.stress import (  # noqa: E402
    CaseResult,
    Supervisor,
    hostile_summary,
    run_hostile,
    run_soak,
)

pytestmark = pytest.mark.e2e

CI_CASES = cases("ci")
SOAK_REQUESTS, SOAK_ROUNDS, SOAK_CONCURRENCY = 50, 3, 50
RSS_GROWTH_TARGET = 0.05


@pytest.fixture(scope="module")
def hostile(tinykimi: Path, cache_dir: Path) -> dict[str, CaseResult]:
    with Supervisor(
        "robust", tinykimi, cache_dir, cache_dir / "logs", "e2e-hostile"
    ) as sup:
        results = run_hostile(sup, CI_CASES)
    return {r.name: r for r in results}


def test_hostile_no_crash_hang_or_5xx(hostile: dict[str, CaseResult]) -> None:
    summary = hostile_summary(list(hostile.values()))
    bad = {
        r.name: (r.status, r.problems)
        for r in hostile.values()
        if r.crashed or r.hang or (r.status or 0) >= 500 or not r.next_ok
    }
    assert summary["crashes"] == 0, bad
    assert summary["hangs"] == 0, bad
    assert summary["http_5xx"] == 0, bad
    assert summary["next_not_served"] == 0, bad


def test_hostile_no_invalid_calls(hostile: dict[str, CaseResult]) -> None:
    invalid = {r.name: r.problems for r in hostile.values() if r.invalid_calls}
    assert not invalid


@pytest.mark.parametrize("name", [c.name for c in CI_CASES])
def test_hostile_case(hostile: dict[str, CaseResult], name: str) -> None:
    r = hostile[name]
    assert r.passed, (
        f"status {r.status} in {r.seconds:.1f} s, next ok {r.next_ok}: "
        f"{r.problems}\n{r.log_excerpt}"
    )


@pytest.fixture(scope="module")
def soak(tinykimi: Path, cache_dir: Path) -> dict[str, Any]:
    with Supervisor(
        "robust", tinykimi, cache_dir, cache_dir / "logs", "e2e-soak"
    ) as sup:
        return run_soak(
            sup,
            SOAK_REQUESTS,
            concurrency=SOAK_CONCURRENCY,
            rounds=SOAK_ROUNDS,
            timeout=120,
            stop_s=2,
            settle_s=3,
        )


def test_soak_serves_every_request(soak: dict[str, Any]) -> None:
    totals = soak["totals"]
    assert totals["http_5xx"] == 0, [r["statuses"] for r in soak["rounds"]]
    assert totals["timeouts"] == totals["errors"] == 0, soak["rounds"]
    for r in soak["rounds"]:
        assert set(r["statuses"]) <= {"200", "aborted"}, r["statuses"]
        assert r["aborted"] > 0  # clients really went away mid-stream
        assert r["sigstop"] and r["sigstop"][0]["in_flight"] > 0
        assert r["next_ok"], r["next_why"]
    assert soak["after"]["server_alive"]


def test_soak_returns_only_valid_calls(soak: dict[str, Any]) -> None:
    totals = soak["totals"]
    examples = [e for r in soak["rounds"] for e in r["problem_examples"]]
    assert totals["responses_with_problems"] == 0, examples
    assert totals["calls_returned"] > 0
    assert totals["correct_altered"] == 0


def test_soak_rss_plateaus(soak: dict[str, Any]) -> None:
    growth = soak["rss_growth"]["peak"]
    per_round = [(r["rss_peak_mb"], r["rss_by_process_mb"]) for r in soak["rounds"]]
    assert growth is not None and growth < RSS_GROWTH_TARGET, per_round
