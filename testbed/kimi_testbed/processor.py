# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer's logits processor outside an engine, for the tests and the
benchmarks: built as vLLM builds it (V1 arguments by default), with no
tokenizer to load and the given grammar store ready at once::

    lp = processor(store)  # then lp.update_state(BatchUpdate(...)); lp.apply(logits)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from vllm_kimi_tools.enforcer.grammars import GrammarStore
from vllm_kimi_tools.enforcer.logits_processor import KimiToolEnforcer


class _Ready:
    """Stands in for the processor's background store loader."""

    def __init__(self, store: GrammarStore) -> None:
        self.store, self.problem = store, None

    def start(self) -> None:
        pass

    def get(self) -> GrammarStore:
        return self.store


def processor(store: GrammarStore, *args: Any) -> KimiToolEnforcer:
    """A ``KimiToolEnforcer`` over ``store``; ``args``: the runner's own
    (V1: device, pin memory; Model Runner V2: its request states)."""
    config = SimpleNamespace(
        model_config=SimpleNamespace(
            skip_tokenizer_init=True, get_vocab_size=lambda: store.table.vocab_size
        )
    )
    lp = KimiToolEnforcer(config, *(args or (torch.device("cpu"), False)))
    lp._loader = _Ready(store)
    return lp
