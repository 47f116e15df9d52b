# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Speculative decoding (ngram, on CPU): vLLM loads no logits processor, so
the Enforcer cannot run. ``kimi_k2_robust`` then leaves vLLM's own structured
output in place, as stock ``kimi_k2`` has it (never less constrained), says
so once in the log and counts each such request on ``/metrics``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from kimi_testbed.server import VllmServer  # noqa: E402
from tests.kimi_text import WEATHER_TOOL  # noqa: E402

NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 2,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}
UNENFORCED = 'vllm_kimi_tools:enforcer_unenforced_requests_total{reason="speculative"}'


@pytest.fixture(scope="module")
def spec_server(tinykimi: Path, cache_dir: Path) -> Iterator[VllmServer]:
    args = [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "kimi_k2_robust",
        "--speculative-config",
        json.dumps(NGRAM),
    ]
    log = cache_dir / "logs" / "e2e-speculative.log"
    with VllmServer(tinykimi, args, cache_dir=cache_dir, log_path=log) as server:
        yield server


def _ask(server: VllmServer, **kw) -> dict:
    body = {
        "model": "tinykimi",
        "messages": [{"role": "user", "content": "The weather in Oslo?"}],
        "tools": [WEATHER_TOOL],
        "max_tokens": 48,
        "temperature": 0,
        "return_token_ids": True,
        **kw,
    }
    status, out = server.post("/v1/chat/completions", body)
    assert status == 200, out
    return out


def _unenforced(server: VllmServer) -> float:
    metrics = server.get_text("/metrics")
    found = re.search(re.escape(UNENFORCED) + r" ([0-9.]+)", metrics)
    return float(found.group(1)) if found else 0.0


def test_speculative_decoding_keeps_vllms_own_tool_grammar(spec_server) -> None:
    section_begin = spec_server.tokenize("<|tool_calls_section_begin|>")
    assert len(section_begin) == 1
    before = _unenforced(spec_server)
    # tool_choice "required": vLLM's structural tag makes the output open the
    # call section at once (the random-weight model would never write it).
    forced = _ask(spec_server, tool_choice="required")["choices"][0]
    assert forced["token_ids"][0] == section_begin[0], forced
    _ask(spec_server)  # "auto": unconstrained, as stock kimi_k2's default
    _ask(spec_server, tool_choice="none")  # not one the Enforcer would take
    assert _unenforced(spec_server) == before + 2
    log = spec_server.log_path.read_text(errors="replace")
    assert log.count("the tool Enforcer cannot run on this server") == 1
    assert "speculative decoding is on" in log
