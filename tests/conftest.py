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


@pytest.fixture(scope="session")
def tinykimi(cache_dir: Path) -> Path:
    pytest.importorskip("torch")
    from vllm_kimi_tools.testbed.tinykimi import ensure_tinykimi

    return ensure_tinykimi(cache_dir / "tinykimi")


@pytest.fixture(scope="session")
def kimi_tokenizer(tinykimi: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tinykimi)


@pytest.fixture(scope="session")
def grammar_store(kimi_tokenizer):
    pytest.importorskip("xgrammar")
    from vllm_kimi_tools.enforcer.grammars import GrammarStore

    store = GrammarStore.for_hf_tokenizer(kimi_tokenizer, 163_840)
    yield store
    store.shutdown()
