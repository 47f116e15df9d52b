# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The plugin in vLLM's multi-process topologies, on CPU: two API servers
(``--api-server-count 2``), tensor parallelism (TP=2) and data parallelism
(DP=2, ``VLLM_CPU_OMP_THREADS_BIND='0|1'`` on this one-NUMA machine).

In each: the Enforcer steers a bad call into a valid one, the prompt is
rendered canonically, and the Enforcer's counters on ``/metrics`` equal the
requests sent: once per request whatever the TP size, one series per DP
rank."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kimi_testbed.conversations import CANONICAL, MESSY, prompt_ids
from kimi_testbed.k2vv import check_message
from kimi_testbed.scenarios import CLOSERS, call
from kimi_testbed.server import PUPPET, VllmServer
from tests.kimi_text import openai_tool, section
from vllm_kimi_tools import tokens

pytestmark = pytest.mark.e2e

WEATHER = openai_tool(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
)
# The model means to call a tool that is not declared, with a bad argument.
BAD = section(call("get_time", '{"tz": "UTC"}', 0))
REQUESTS = "vllm_kimi_tools:enforcer_requests_total"
BIND = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
LOG_EVERY_SECOND = {"KIMI_TOOLS_LOG_INTERVAL": "1"}

TOPOLOGIES = {
    "api-servers-2": (["--api-server-count", "2"], {}),
    "tp-2": (["--tensor-parallel-size", "2"], BIND),
    "dp-2": (["--data-parallel-size", "2"], BIND),
}


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def server(request, tinykimi: Path, cache_dir: Path) -> Iterator[VllmServer]:
    args, env = TOPOLOGIES[request.param]
    with VllmServer(
        tinykimi,
        [
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "kimi_k2_robust",
            "--logits-processors",
            PUPPET,
            *args,
        ],
        cache_dir=cache_dir,
        log_path=cache_dir / "logs" / f"e2e-topology-{request.param}.log",
        # Multiprocessing is what these topologies are about; the log line
        # every second, so the last one is seen soon after traffic stops.
        env={
            **env,
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
            "KIMI_TOOLS_LOG_INTERVAL": "1",
        },
        startup_timeout=600,
    ) as srv:
        srv.topology = request.param
        yield srv


def _ask_bad_call(server: VllmServer) -> dict:
    closers = [server.tokenize(t)[0] for t in CLOSERS]
    status, reply = server.post(
        "/v1/chat/completions",
        {
            "model": "tinykimi",
            "messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [WEATHER],
            "max_tokens": 80,
            "temperature": 0,
            "vllm_xargs": {
                "puppet_script": server.tokenize(BAD + tokens.IM_END),
                "puppet_mode": "intend",
                "puppet_closers": closers,
            },
        },
    )
    assert status == 200, reply
    return reply["choices"][0]


def _series(metrics_text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one counter in a /metrics text."""
    found = re.findall(
        rf"^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+]+)$", metrics_text, re.M
    )
    return {labels: float(value) for labels, value in found}


def test_topology(server: VllmServer) -> None:
    sent = 4
    for _ in range(sent):
        choice = _ask_bad_call(server)
        verdict = check_message(choice["message"], choice["finish_reason"], [WEATHER])
        assert choice["finish_reason"] == "tool_calls", choice
        assert verdict.ok, (verdict, choice["message"])
        assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"

    # Canonical render: a messy history tokenizes as the canonical one.
    assert prompt_ids(server, MESSY) == prompt_ids(server, CANONICAL)

    # Counters: every request once (not once per TP rank); by DP rank.
    series = _series(server.get_text("/metrics"), REQUESTS)
    by_engine = {re.search(r'engine="(\d+)"', k).group(1): v for k, v in series.items()}
    assert sum(by_engine.values()) == sent, (series, server.log_tail())
    assert set(by_engine) <= ({"0", "1"} if server.topology == "dp-2" else {"0"})

    # Log lines: each names its DP rank, and the last tally is logged once
    # traffic stops (one interval later): the same counts as /metrics.
    logged = _last_logged(server, sent)
    assert logged == {k: int(v) for k, v in by_engine.items()}, server.log_tail()
    if server.topology == "tp-2":  # one TP rank logs
        log = server.log_path.read_text(errors="replace")
        assert re.search(r"Worker_TP0.*Kimi tool Enforcer: \d+ requests", log)
        assert not re.search(r"Worker_TP1.*Kimi tool Enforcer: \d+ requests", log)


def _last_logged(server: VllmServer, want: int, wait: float = 15.0) -> dict[str, int]:
    """The requests in each DP rank's last summary line."""
    pattern = re.compile(
        r"Kimi tool Enforcer: (\d+) requests.*?(?:\(DP rank (\d+)\))?$"
    )
    deadline = time.monotonic() + wait
    while True:
        last: dict[str, int] = {}
        for line in server.log_path.read_text(errors="replace").splitlines():
            found = pattern.search(line)
            if found:
                last[found.group(2) or "-"] = int(found.group(1))
        assert "-" not in last, "a summary line does not name its DP rank"
        if sum(last.values()) >= want or time.monotonic() > deadline:
            return last
        time.sleep(0.5)
