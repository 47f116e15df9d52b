# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    path = Path(os.environ.get("VLLM_KIMI_TOOLS_CACHE", REPO / ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
