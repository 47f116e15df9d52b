# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Counters for what the plugin did, exported to vLLM's ``/metrics``.

* ``vllm_kimi_tools:dropped_tool_calls_total{reason}``: calls the model wrote
  that were not returned as tool calls (API server).
* ``vllm_kimi_tools:enforcer_degraded_schemas_total``: notes on tool schemas
  the Enforcer rewrote inexactly (API server; one per note).
* ``vllm_kimi_tools:enforcer_loose_tools_total``: tools enforced with a
  grammar looser than their schema, whose calls may fail ``jsonschema``
  (API server; once per tool per request).
* ``vllm_kimi_tools:enforcer_refused_requests_total{reason}``: requests
  refused at admission (HTTP 400): ``schema`` (unusable or unsatisfiable),
  ``budget`` (no call fits the output budget), ``request``, ``error`` (an
  unexpected failure preparing the tools, logged with its traceback; API
  server).
* ``vllm_kimi_tools:enforcer_unenforced_requests_total{reason}``: requests
  the Enforcer would constrain but cannot on this server (``speculative``);
  they get vLLM's own structured output, as with stock ``kimi_k2`` (API
  server).
* ``vllm_kimi_tools:enforcer_requests_total``, ``..._blocked_tokens_total``
  (steps where the Enforcer changed the model's first choice; estimated
  from one row in ``KIMI_TOOLS_BLOCKED_SAMPLE``),
  ``..._compile_seconds_total``, ``..._stood_down_total{reason}`` (``error``
  for an exception contained to its request, ``compile``, ``empty``,
  ``rejected``, ``conflict``, ``blind``, ``speculative``, ``unavailable``,
  ``prompt``) and ``..._length_fallbacks_total{reason}`` (steps where a
  string length bound gave way: ``dead_end``, ``budget``): the Enforcer in
  the engine. They reach ``/metrics`` when the engine runs in the API
  server's process; the Enforcer also logs them periodically.

The same counts are kept in-process (:func:`counts`) for tests and logs.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally
from typing import Any

PREFIX = "vllm_kimi_tools:"
DROPPED_TOOL_CALLS_TOTAL = PREFIX + "dropped_tool_calls_total"
DEGRADED_SCHEMAS_TOTAL = PREFIX + "enforcer_degraded_schemas_total"
ENFORCED_REQUESTS_TOTAL = PREFIX + "enforcer_requests_total"
BLOCKED_TOKENS_TOTAL = PREFIX + "enforcer_blocked_tokens_total"
COMPILE_SECONDS_TOTAL = PREFIX + "enforcer_compile_seconds_total"
STOOD_DOWN_TOTAL = PREFIX + "enforcer_stood_down_total"
LENGTH_FALLBACKS_TOTAL = PREFIX + "enforcer_length_fallbacks_total"
LOOSE_TOOLS_TOTAL = PREFIX + "enforcer_loose_tools_total"
REFUSED_REQUESTS_TOTAL = PREFIX + "enforcer_refused_requests_total"
UNENFORCED_REQUESTS_TOTAL = PREFIX + "enforcer_unenforced_requests_total"

_HELP = {
    DROPPED_TOOL_CALLS_TOTAL: (
        "Tool calls written by the model but not returned, by reason.",
        ["reason"],
    ),
    DEGRADED_SCHEMAS_TOTAL: ("Tool schemas enforced by a looser grammar.", []),
    ENFORCED_REQUESTS_TOTAL: ("Requests decoded under the Enforcer.", []),
    BLOCKED_TOKENS_TOTAL: (
        "Decode steps where the Enforcer changed the model's first choice.",
        [],
    ),
    COMPILE_SECONDS_TOTAL: ("Seconds spent compiling argument grammars.", []),
    STOOD_DOWN_TOTAL: (
        "Requests the Enforcer stopped enforcing, by reason.",
        ["reason"],
    ),
    LENGTH_FALLBACKS_TOTAL: (
        "Decode steps where a string length bound gave way, by reason.",
        ["reason"],
    ),
    LOOSE_TOOLS_TOTAL: (
        "Tools enforced with a grammar looser than their schema.",
        [],
    ),
    REFUSED_REQUESTS_TOTAL: (
        "Requests refused at admission by the Enforcer, by reason.",
        ["reason"],
    ),
    UNENFORCED_REQUESTS_TOTAL: (
        "Requests the Enforcer cannot constrain on this server, by reason.",
        ["reason"],
    ),
}

_lock = threading.Lock()
_tally: _Tally[str] = _Tally()
_prom: dict[str, Any] = {}


def _counter(name: str) -> Any:
    if name in _prom:
        return _prom[name]
    try:
        from prometheus_client import REGISTRY, Counter
    except ImportError:  # pragma: no cover - prometheus ships with vLLM
        return None
    doc, labels = _HELP[name]
    try:
        counter = Counter(name.removesuffix("_total"), doc, labelnames=labels)
    except ValueError:  # already registered (plugin loaded twice)
        counter = REGISTRY._names_to_collectors[name]
    _prom[name] = counter
    return counter


def inc(name: str, amount: float = 1.0, label: str | None = None) -> None:
    if amount <= 0:
        return
    key = name if label is None else f"{name}{{{label}}}"
    with _lock:
        _tally[key] += amount
    counter = _counter(name)
    if counter is not None:
        (counter.labels(label) if label is not None else counter).inc(amount)


def record_dropped(reason: str) -> None:
    inc(DROPPED_TOOL_CALLS_TOTAL, 1, reason)


def counts() -> dict[str, float]:
    with _lock:
        return dict(_tally)


def dropped_counts() -> dict[str, int]:
    prefix = DROPPED_TOOL_CALLS_TOTAL + "{"
    return {
        k[len(prefix) : -1]: int(v) for k, v in counts().items() if k.startswith(prefix)
    }
