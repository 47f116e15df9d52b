# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    from kimi_testbed.paths import CACHE_ENV, setting

    path = Path(setting(CACHE_ENV) or REPO / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tinykimi(cache_dir: Path) -> Path:
    pytest.importorskip("torch")
    from kimi_testbed.tinykimi import ensure_tinykimi

    return ensure_tinykimi(cache_dir / "tinykimi")


def pytest_report_header(config) -> str:
    from kimi_testbed.tinykimi import real_tokenizer_dir

    found = real_tokenizer_dir()
    return (
        f"test-bed tokenizer: Moonshot's real tokenizer ({found})"
        if found
        else "test-bed tokenizer: synthetic (Moonshot's files not found)"
    )


@pytest.fixture(scope="session")
def kimi_tokenizer(tinykimi: Path):
    """The test-bed model's tokenizer: Moonshot's real one beside ../shared."""
    from transformers import AutoTokenizer

    from kimi_testbed.tinykimi import needs_remote_code

    return AutoTokenizer.from_pretrained(
        tinykimi, trust_remote_code=needs_remote_code(tinykimi)
    )


# Moonshot's real tokenizer (tiktoken + remote code), beside the repo in CI.
REAL_TOKENIZER = SHARED / "anchors" / "kimi" / "tokenizer-k25"


@pytest.fixture(scope="session")
def real_tokenizer_dir() -> Path:
    if not (REAL_TOKENIZER / "tiktoken.model").exists():
        pytest.skip(f"Moonshot's tokenizer is not beside the repo ({REAL_TOKENIZER})")
    return REAL_TOKENIZER


@pytest.fixture(scope="session")
def real_kimi_tokenizer(real_tokenizer_dir: Path):
    """Moonshot's tokenizer, loaded as ``vllm serve --trust-remote-code`` does."""
    pytest.importorskip("tiktoken")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_tokenizer_dir, trust_remote_code=True)


def _grammar_store(tokenizer, vocab_size: int):
    pytest.importorskip("xgrammar")
    from vllm_kimi_tools.enforcer.grammars import GrammarStore

    store = GrammarStore.for_hf_tokenizer(tokenizer, vocab_size)
    yield store
    store.shutdown()


@pytest.fixture(scope="session")
def real_grammar_store(real_kimi_tokenizer):
    yield from _grammar_store(real_kimi_tokenizer, 163_840)


@pytest.fixture(scope="session")
def grammar_store(kimi_tokenizer):
    yield from _grammar_store(kimi_tokenizer, 163_840)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 791-token Kimi-format tokenizer for the pure core's tests
    (:mod:`kimi_testbed.tinyvocab`); the full vocabulary is ``kimi_tokenizer``."""
    pytest.importorskip("tokenizers")
    from kimi_testbed.tinyvocab import tiny_kimi_tokenizer

    return tiny_kimi_tokenizer()


@pytest.fixture(scope="session")
def tiny_store(tiny_tokenizer):
    yield from _grammar_store(tiny_tokenizer, len(tiny_tokenizer))
