# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Helpers to drive the Enforcer token by token with a Kimi tokenizer (the
test bed's: Moonshot's real one when ../shared has it, else synthetic)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from kimi_testbed import corpora
from tests.conftest import SHARED
from vllm_kimi_tools.enforcer.admission import (
    build_spec,
)
from vllm_kimi_tools.enforcer.machine import Ban, Fill, Only, RequestEnforcer
from vllm_kimi_tools.tools import DeclaredTool

WALLE_DIR = SHARED / "anchors" / "walle"


def walle_schemas() -> list[tuple[str, dict[str, Any]]]:
    return corpora.walle_schemas(WALLE_DIR)


bfcl_functions = corpora.bfcl_functions


def enforcer_for(store, tools: dict[str, Any], **kw: Any) -> RequestEnforcer:
    """An Enforcer for ``{name: parameters}`` (``first_index`` etc. in kw)."""
    spec_kw = {
        k: kw.pop(k)
        for k in ("choice", "named", "parallel", "max_tokens", "reply")
        if k in kw
    }
    spec, _ = build_spec(
        [DeclaredTool(name, params) for name, params in tools.items()],
        first_index=kw.pop("first_index", 0),
        **spec_kw,
    )
    return RequestEnforcer(spec, store, **kw)


def allowed(enforcer: RequestEnforcer, vocab_size: int) -> np.ndarray:
    """Boolean array: which ids the Enforcer allows next."""
    row = np.full((vocab_size + 31) // 32, -1, dtype=np.int32)
    directive = enforcer.directive(row)
    if isinstance(directive, Ban):
        out = np.ones(vocab_size, dtype=bool)
        out[list(directive.ids)] = False
        return out
    if isinstance(directive, Only):
        out = np.zeros(vocab_size, dtype=bool)
        out[list(directive.ids)] = True
        return out
    assert isinstance(directive, Fill)
    bits = np.unpackbits(row.view(np.uint8), bitorder="little").astype(bool)
    return bits[:vocab_size]


@dataclass
class Drive:
    ok: bool
    stopped_at: int | None  # index of the first refused token
    refused: str | None = None


def drive(enforcer: RequestEnforcer, tokenizer, text: str) -> Drive:
    """Feed ``text``'s tokens; stop at the first one the Enforcer refuses."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    vocab = len(enforcer._table.token_bytes)
    for i, token in enumerate(ids):
        if not allowed(enforcer, vocab)[token]:
            return Drive(False, i, tokenizer.decode(ids[i : i + 1]))
        assert enforcer.accept(token), enforcer.off_reason
    return Drive(True, None)


def random_call(
    enforcer: RequestEnforcer, rng: random.Random, closers: list[int], steps: int
) -> bytes | None:
    """Walk the grammar from ARGS to ``<|tool_call_end|>``; the argument bytes.

    Picks a closer when one is allowed (half the time), else any allowed
    token. None when the walk did not finish in ``steps``.
    """
    table = enforcer._table
    out = b""
    for _ in range(steps):
        ok = allowed(enforcer, table.vocab_size)
        ids = np.flatnonzero(ok)
        assert len(ids), "the Enforcer allowed nothing"
        usable = [c for c in closers if ok[c]]
        token = (
            rng.choice(usable)
            if usable and rng.random() < 0.5
            else int(ids[rng.randrange(len(ids))])
        )
        assert enforcer.accept(token), enforcer.off_reason
        if token == table.markers.call_end:
            return out
        out += table.token_bytes[token]
    return None
