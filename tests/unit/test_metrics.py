# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer's counters across processes: written by the engine's
tensor-parallel rank 0 in Prometheus' multiprocess format, read by the API
server's registry (its own directory, or vLLM's ``PROMETHEUS_MULTIPROC_DIR``
with several API servers)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

pytest.importorskip("vllm")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

from vllm_kimi_tools import metrics  # noqa: E402


def enforcer(grammar_store):
    """A processor with one enforced request in its batch, after one step."""
    import torch

    from kimi_testbed.processor import processor
    from tests.unit.test_logits_processor import params

    lp = processor(grammar_store)
    lp.update_state(BatchUpdate(1, [], [(0, params(), [1], [])], []))
    lp.apply(torch.zeros(1, grammar_store.table.vocab_size))
    return lp


REQUESTS = metrics.ENFORCED_REQUESTS_TOTAL
STOOD_DOWN = metrics.STOOD_DOWN_TOTAL


@pytest.fixture
def engine_dir(tmp_path, monkeypatch):
    """A fresh shared directory, as the API server makes one, and the
    module's per-process state put back afterwards."""
    monkeypatch.setattr(metrics, "_engine", None)
    monkeypatch.delenv(metrics.PROMETHEUS_DIR_ENV, raising=False)
    monkeypatch.setenv(metrics.DIR_ENV, str(tmp_path))
    return tmp_path


def scrape(directory) -> str:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry).decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_rank_zero_counts_reach_the_api_servers_registry(engine_dir) -> None:
    assert metrics.report_engine(dp_rank=0, tp_rank=0)
    metrics.inc(REQUESTS, 3)
    metrics.inc(STOOD_DOWN, 2, "compile")
    text = scrape(engine_dir)
    assert sample(text, REQUESTS, engine="0") == 3
    assert sample(text, STOOD_DOWN, engine="0", reason="compile") == 2
    # The file holds totals: a scrape reads the state of the moment.
    metrics.inc(REQUESTS, 1)
    assert sample(scrape(engine_dir), REQUESTS, engine="0") == 4


def test_other_tensor_parallel_ranks_do_not_count_twice(engine_dir) -> None:
    assert not metrics.report_engine(dp_rank=0, tp_rank=1)
    before = metrics.counts().get(REQUESTS, 0)
    metrics.inc(REQUESTS, 5)
    assert metrics.counts()[REQUESTS] == before + 5  # this rank's own tally
    assert sample(scrape(engine_dir), REQUESTS, engine="0") is None
    assert not list(engine_dir.glob("*.db"))


def test_a_second_enforcer_in_the_process_keeps_the_count(engine_dir) -> None:
    metrics.report_engine(0, 0)
    metrics.inc(REQUESTS, 2)
    metrics.report_engine(0, 0)  # e.g. a second runner in the same process
    metrics.inc(REQUESTS, 1)
    assert sample(scrape(engine_dir), REQUESTS, engine="0") == 3


WRITER = """
import sys
from vllm_kimi_tools import metrics
metrics.report_engine(dp_rank=int(sys.argv[1]), tp_rank=int(sys.argv[2]))
metrics.inc(metrics.ENFORCED_REQUESTS_TOTAL, float(sys.argv[3]))
"""


def test_data_parallel_engines_add_up_by_engine_label(engine_dir) -> None:
    """Three engine processes (DP ranks 0 and 1; rank 1 with TP=2) write;
    the scrape has one series per DP rank, never multiplied by TP."""
    for dp, tp, n in [(0, 0, 2), (1, 0, 5), (1, 1, 5)]:
        subprocess.run(
            [sys.executable, "-c", WRITER, str(dp), str(tp), str(n)], check=True
        )
    text = scrape(engine_dir)
    assert sample(text, REQUESTS, engine="0") == 2
    assert sample(text, REQUESTS, engine="1") == 5


def test_vllms_multiprocess_directory_wins(engine_dir, tmp_path_factory, monkeypatch):
    """With ≥ 2 API servers vLLM sets PROMETHEUS_MULTIPROC_DIR for every
    process and aggregates it itself: the counts go there."""
    vllm_dir = tmp_path_factory.mktemp("prometheus")
    monkeypatch.setenv(metrics.PROMETHEUS_DIR_ENV, str(vllm_dir))
    metrics.report_engine(0, 0)
    metrics.inc(REQUESTS, 1)
    assert sample(scrape(vllm_dir), REQUESTS, engine="0") == 1
    assert not list(engine_dir.glob("*.db"))


def test_the_api_server_shares_one_directory(monkeypatch) -> None:
    """The directory is made once per process (an inherited value is
    replaced) and read by the default registry."""
    from prometheus_client import REGISTRY

    monkeypatch.setattr(metrics, "_shared_dir", None)
    monkeypatch.setattr(metrics, "_engine", None)
    monkeypatch.setenv(metrics.DIR_ENV, "/inherited/from/a/parent")
    monkeypatch.delenv(metrics.PROMETHEUS_DIR_ENV, raising=False)
    directory = metrics.share_engine_counters()
    try:
        assert directory != "/inherited/from/a/parent"
        assert metrics.share_engine_counters() == directory
        metrics.report_engine(dp_rank=3, tp_rank=0)  # an in-process engine
        metrics.inc(REQUESTS, 7)
        text = generate_latest(REGISTRY).decode()
        assert sample(text, REQUESTS, engine="3") == 7
    finally:
        for collector in list(REGISTRY._collector_to_names):
            if getattr(collector, "_path", None) == directory:
                REGISTRY.unregister(collector)


def test_the_last_counts_are_logged_once_the_batch_empties(
    grammar_store, monkeypatch, caplog
) -> None:
    """Traffic stops: the counts since the last line are logged one interval
    later, without another decode step."""
    monkeypatch.setenv("KIMI_TOOLS_LOG_INTERVAL", "0.2")
    monkeypatch.setattr(metrics, "_engine", None)
    caplog.set_level(logging.INFO, logger="vllm")
    lp = enforcer(grammar_store)
    lp._last_log = time.monotonic() + 3600  # no periodic line from here
    caplog.clear()
    lp.update_state(BatchUpdate(0, [0], [], []))
    deadline = time.monotonic() + 5
    while "Kimi tool Enforcer:" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Kimi tool Enforcer:" in caplog.text
    assert "0 live request states" in caplog.text


def test_only_tensor_parallel_rank_zero_logs(grammar_store, monkeypatch, caplog):
    from vllm_kimi_tools.enforcer import logits_processor

    monkeypatch.setenv("KIMI_TOOLS_LOG_INTERVAL", "0")
    monkeypatch.setattr(metrics, "_engine", None)
    monkeypatch.setattr(logits_processor, "parallel_ranks", lambda config: (0, 1))
    caplog.set_level(logging.INFO, logger="vllm")
    lp = enforcer(grammar_store)
    lp.update_state(BatchUpdate(0, [0], [], []))
    time.sleep(0.3)
    assert "Kimi tool Enforcer" not in caplog.text
