# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's vendor verifier, unmodified, against the test bed (CI-sized).

The verifier's own environment (``scripts/setup_kvv.sh``) runs its suites
against ``vllm serve`` with the lazy stand-in (``kimi_testbed.standin``: it
means to call with ``{}``): ``kimi_k2_robust`` must pass every
``tool_call_json_schema`` case, streamed and not, thinking on and off, and
the contract tests the plugin honours; stock ``kimi_k2`` beside it must not.
The full three-way run is ``bash scripts/dev.sh kvv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kimi_testbed import kvv
from kimi_testbed.server import VllmServer
from kimi_testbed.standin import LAZY
from kimi_testbed.tinykimi import ensure_tinykimi

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not kvv.available(), reason="needs ../shared (the verifier)"),
]
CONTRACT = (
    "tool_call_id or strict_non_boolean or without_tools_field or "
    "basic_enabled_returns_reasoning or stream_returns_reasoning"
)


@pytest.fixture(scope="module")
def verifier() -> Path:
    return kvv.setup()


@pytest.fixture(scope="module")
def model(cache_dir: Path) -> Path:
    return ensure_tinykimi(cache_dir / "tinykimi-k25", template="k25")


def _serve(config: str, model: Path, cache_dir: Path) -> VllmServer:
    return kvv.start_server(config, LAZY, model, cache_dir / "logs", cache_dir)


@pytest.fixture(scope="module")
def robust(model: Path, cache_dir: Path) -> Iterator[VllmServer]:
    with _serve("robust", model, cache_dir) as server:
        yield server


def _failures(outcomes: list[kvv.Outcome]) -> list[str]:
    return [f"{o.test}: {o.message[:300]}" for o in outcomes if o.outcome != "passed"]


@pytest.mark.parametrize(
    "suite", ["tool_call_json_schema", "tool_call_json_schema+thinking"]
)
def test_robust_passes_every_tool_schema_case(verifier, robust, tmp_path, suite):
    outcomes = kvv.run_suite(
        verifier, suite, robust.base_url, tmp_path, extra=["-n", "4"]
    )
    assert len(outcomes) >= 200
    assert not _failures(outcomes)


def test_robust_honours_the_contract_points(verifier, robust, tmp_path) -> None:
    outcomes = kvv.run_suite(
        verifier, "k3_features", robust.base_url, tmp_path, extra=["-k", CONTRACT]
    )
    assert len(outcomes) >= 12
    assert not _failures(outcomes)


def test_stock_fails_where_robust_passes(verifier, model, cache_dir, tmp_path) -> None:
    with _serve("stock_default", model, cache_dir) as stock:
        tools = kvv.run_suite(
            verifier,
            "tool_call_json_schema",
            stock.base_url,
            tmp_path / "tools",
            extra=["-n", "4", "--max-cases", "40"],
        )
        contract = kvv.run_suite(
            verifier, "k3_features", stock.base_url, tmp_path, extra=["-k", CONTRACT]
        )
    causes = {kvv.classify(o)[0] for o in tools + contract if o.outcome == "failed"}
    assert "arguments break the schema (not enforced)" in causes, causes
    assert {
        "tool message without tool_call_id accepted",
        "tool_choice without tools refused",
        "non-boolean json_schema.strict accepted",
        "no reasoning_content (vLLM writes reasoning)",
    } <= causes, causes
