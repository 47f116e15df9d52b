# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""A real ``vllm serve`` on CPU with the tiny Kimi-format model, per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from kimi_testbed.server import PUPPET, VllmServer  # noqa: E402


def _serve(
    tinykimi: Path,
    cache_dir: Path,
    name: str,
    parser: str,
    env: dict[str, str] | None = None,
) -> VllmServer:
    return VllmServer(
        tinykimi,
        [
            "--enable-scale-out",  # the /render endpoints
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            parser,
            "--logits-processors",
            PUPPET,
        ],
        cache_dir=cache_dir,
        log_path=cache_dir / "logs" / f"e2e-{name}.log",
        env=env,
    )


@pytest.fixture(scope="session")
def robust_server(tinykimi: Path, cache_dir: Path) -> Iterator[VllmServer]:
    # The Enforcer's summary line every second instead of every ten, and
    # blocked steps counted on every row (exact) rather than one in 32.
    env = {"KIMI_TOOLS_LOG_INTERVAL": "1", "KIMI_TOOLS_BLOCKED_SAMPLE": "1"}
    with _serve(tinykimi, cache_dir, "robust", "kimi_k2_robust", env) as server:
        yield server


@pytest.fixture(scope="session")
def stock_server(tinykimi: Path, cache_dir: Path) -> Iterator[VllmServer]:
    with _serve(tinykimi, cache_dir, "stock", "kimi_k2") as server:
        yield server
