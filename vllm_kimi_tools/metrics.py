# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Counters for what the plugin did, exported to vLLM's ``/metrics``.

``vllm_kimi_tools:dropped_tool_calls_total{reason="undeclared_tool"}`` counts
calls the model wrote that were not returned as tool calls. The same counts
are kept in-process (``dropped_counts()``) for tests and logs.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from typing import Any

DROPPED_TOOL_CALLS_TOTAL = "vllm_kimi_tools:dropped_tool_calls_total"

_lock = threading.Lock()
_tally: _Tally[str] = _Tally()
_prom_counter: Any = None


def _prometheus_counter() -> Any:
    global _prom_counter
    if _prom_counter is not None:
        return _prom_counter
    try:
        from prometheus_client import REGISTRY, Counter
    except ImportError:  # pragma: no cover - prometheus ships with vLLM
        return None
    try:
        _prom_counter = Counter(
            DROPPED_TOOL_CALLS_TOTAL.removesuffix("_total"),
            "Tool calls written by the model but not returned, by reason.",
            labelnames=["reason"],
        )
    except ValueError:  # already registered (plugin loaded twice)
        _prom_counter = REGISTRY._names_to_collectors[DROPPED_TOOL_CALLS_TOTAL]
    return _prom_counter


def record_dropped(reason: str) -> None:
    with _lock:
        _tally[reason] += 1
    counter = _prometheus_counter()
    if counter is not None:
        counter.labels(reason=reason).inc()


def dropped_counts() -> dict[str, int]:
    with _lock:
        return dict(_tally)
