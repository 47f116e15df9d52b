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
  the engine, labelled ``engine`` (the data-parallel rank, as vLLM's own).

How the engine's counts reach ``/metrics``: vLLM ships no statistics from a
worker to the API server (its ``SchedulerStats`` are made by the scheduler,
and a logits processor cannot add to them). The Enforcer on tensor-parallel
rank 0 (only: the other ranks see the same logits) writes its counters in
Prometheus' multiprocess file format (``counter_kimitools-<pid>.db``), which
the API server reads at every scrape:

* with ``--api-server-count`` ≥ 2 vLLM runs Prometheus in multiprocess mode:
  the files go to its ``PROMETHEUS_MULTIPROC_DIR`` and vLLM's own collector
  adds them up, whichever API server is scraped;
* otherwise the API server makes a directory of its own when vLLM builds
  its renderer, before it starts the engine (``KIMI_TOOLS_METRICS_DIR``,
  inherited by the engine processes, removed at exit), and reads it with a
  collector in the default registry.

Each increment is one write to a memory-mapped file: a scrape sees the
counts of the moment (blocked steps and compile seconds move from the
engine's tallies when requests leave the batch and at each log line).

The same counts are kept in-process (:func:`counts`) for tests and logs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
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

# Counted by the Enforcer in the engine; the rest in the API server.
ENGINE_COUNTERS = frozenset(
    {
        ENFORCED_REQUESTS_TOTAL,
        BLOCKED_TOKENS_TOTAL,
        COMPILE_SECONDS_TOTAL,
        STOOD_DOWN_TOTAL,
        LENGTH_FALLBACKS_TOTAL,
    }
)
# Set by the plugin in the top process (see :func:`share_engine_counters`).
DIR_ENV = "KIMI_TOOLS_METRICS_DIR"
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

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


class _EngineFile:
    """This process's engine counters, in Prometheus' multiprocess format."""

    def __init__(self, directory: str, engine: str) -> None:
        self.path = os.path.join(directory, f"counter_kimitools-{os.getpid()}.db")
        self.engine = engine
        self._file: Any = None  # opened at the first count
        self._values: dict[str, float] = {}

    def inc(self, name: str, amount: float, label: str | None) -> None:
        from prometheus_client.mmap_dict import MmapedDict, mmap_key

        doc, labelnames = _HELP[name]
        values = [self.engine] if label is None else [self.engine, label]
        key = mmap_key(
            name.removesuffix("_total"), name, ["engine", *labelnames], values, doc
        )
        value = self._values.get(key, 0.0) + amount
        self._values[key] = value
        if self._file is None:
            self._file = MmapedDict(self.path)
        self._file.write_value(key, value, 0.0)


# None: engine counts go to the default registry (no directory is shared);
# False: this rank does not report (tensor-parallel rank > 0).
_engine: _EngineFile | bool | None = None


def report_engine(dp_rank: int, tp_rank: int) -> bool:
    """Called by the Enforcer in each worker: whether this one reports
    (tensor-parallel rank 0), and where its counts go."""
    global _engine
    if tp_rank != 0:
        _engine = False
        return False
    directory = os.environ.get(PROMETHEUS_DIR_ENV) or os.environ.get(DIR_ENV)
    if not directory or not os.path.isdir(directory):
        return True
    file = _EngineFile(directory, str(dp_rank))
    with _lock:
        # One file per process: a second Enforcer keeps counting in it.
        if not (
            isinstance(_engine, _EngineFile)
            and (_engine.path, _engine.engine) == (file.path, file.engine)
        ):
            _engine = file
    return True


_shared_dir: str | None = None


def share_engine_counters() -> str:
    """In the API server, before vLLM starts the engine: a directory for the
    engine processes' counter files (:data:`DIR_ENV`, which they inherit),
    read into this process's default registry. Once per process; a value
    inherited from a parent process is replaced."""
    global _shared_dir
    with _lock:
        if _shared_dir is None:
            from prometheus_client import REGISTRY
            from prometheus_client.multiprocess import MultiProcessCollector

            directory = tempfile.mkdtemp(prefix="kimi-tools-metrics-")
            atexit.register(shutil.rmtree, directory, True)
            MultiProcessCollector(REGISTRY, path=directory)
            _shared_dir = directory
        os.environ[DIR_ENV] = _shared_dir
        return _shared_dir


def inc(name: str, amount: float = 1.0, label: str | None = None) -> None:
    if amount <= 0:
        return
    key = name if label is None else f"{name}{{{label}}}"
    with _lock:
        _tally[key] += amount
        if name in ENGINE_COUNTERS and _engine is not None:
            if isinstance(_engine, _EngineFile):
                _engine.inc(name, amount, label)
            return
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
