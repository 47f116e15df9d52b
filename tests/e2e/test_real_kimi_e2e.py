# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's real tokenizer through ``vllm serve``: every reply exact, on
every API, streamed or not, on K2-Thinking and K2.5-style prompts.

Each scenario of the CI-sized K2VV suite (every failure mode, BFCL correct
calls, ``tool_choice`` required and named, and on K2.5 the prompt-opened
thinking cases) is sent four times: Chat Completions and Responses, each
streamed and not. The four replies must be identical (content, reasoning,
ids, names, argument text, finish reason) and clean by the K2VV checks;
correct calls must come back exactly as written. The K2-Thinking server
renders with Moonshot's own K2-Thinking template (``--chat-template``); the
K2.5 one with the test bed's reconstruction of the K2.5 rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kimi_testbed.conversations import WEATHER_ROUND_TRIP
from kimi_testbed.k2vv import accumulate_stream
from kimi_testbed.k2vv_sim import Result, Simulation
from kimi_testbed.scenarios import (
    call,
    forced_scenarios,
    section,
    suite,
)
from kimi_testbed.server import PUPPET, VllmServer
from kimi_testbed.tinykimi import ensure_tinykimi, tokenizer_kind
from tests.conftest import SHARED
from vllm_kimi_tools import tokens

pytestmark = pytest.mark.e2e

K2_THINKING = (
    SHARED
    / "anchors"
    / "kimi"
    / "K2-Thinking_HF-official_RECONSTRUCTED_separators-restored.jinja"
)
VARIANTS = (("chat", False), ("chat", True), ("responses", False), ("responses", True))


def _server(model: Path, cache_dir: Path, name: str, *extra: str) -> VllmServer:
    if tokenizer_kind(model) != "real":
        pytest.skip("Moonshot's tokenizer is not beside the repo")
    return VllmServer(
        model,
        [
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "kimi_k2_robust",
            "--reasoning-parser",
            "kimi_k2_robust",
            "--logits-processors",
            PUPPET,
            *extra,
        ],
        cache_dir=cache_dir,
        log_path=cache_dir / "logs" / f"e2e-real-{name}.log",
    )


@pytest.fixture(scope="module")
def k2thinking_server(tinykimi: Path, cache_dir: Path) -> Iterator[VllmServer]:
    if not K2_THINKING.exists():
        pytest.skip("Moonshot's K2-Thinking template is not beside the repo")
    with _server(
        tinykimi, cache_dir, "k2thinking", "--chat-template", str(K2_THINKING)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def k25_server(cache_dir: Path) -> Iterator[VllmServer]:
    model = ensure_tinykimi(cache_dir / "tinykimi-k25", template="k25")
    with _server(model, cache_dir, "k25") as server:
        yield server


def _reply(result: Result, stream: bool = False) -> tuple[Any, ...]:
    """What a client keeps: content, reasoning, ids, names, argument text.

    A stream cut by ``max_tokens`` may have sent the start of a call (its
    arguments stream as written); ``length`` tells the client to drop it.
    """
    message = result.message or {}
    calls = tuple(
        (c.get("id"), c["function"].get("name"), c["function"].get("arguments"))
        for c in message.get("tool_calls") or []
    )
    if stream and result.finish_reason == "length":
        calls = ()
    return (message.get("content") or None, message.get("reasoning") or None, calls)


def _matrix(server: VllmServer, template: str) -> list[tuple[str, list[Result]]]:
    scenarios = suite("ci", template=template) + forced_scenarios(template)
    runs = [
        dataclasses.replace(s, api=api, stream=stream)
        for s in scenarios
        for api, stream in VARIANTS
    ]
    results, _ = Simulation(server).run_all(runs, concurrency=4)
    n = len(VARIANTS)
    return [
        (scenarios[i].id, results[i * n : (i + 1) * n]) for i in range(len(scenarios))
    ]


@pytest.mark.parametrize("template", ["k2thinking", "k25"])
def test_every_reply_exact_on_both_apis(request, template: str) -> None:
    server = request.getfixturevalue(f"{template}_server")
    matrix = _matrix(server, "k25" if template == "k25" else "k2")
    failed = [
        (scenario, api, stream, r.failures, [d[:300] for d in r.details])
        for scenario, results in matrix
        for (api, stream), r in zip(VARIANTS, results)
        if not r.ok
    ]
    assert not failed
    differ = {
        scenario: {
            f"{api}{'/stream' * stream}": _reply(r, stream)
            for (api, stream), r in zip(VARIANTS, results)
        }
        for scenario, results in matrix
        if len({_reply(r, s) for (_, s), r in zip(VARIANTS, results)}) != 1
    }
    assert not differ
    # Finish reasons: the same streamed or not (the APIs word them apart:
    # Chat Completions says "stop" for a named tool choice, as OpenAI does).
    reasons = {
        scenario: [r.finish_reason for r in results]
        for scenario, results in matrix
        if results[0].finish_reason != results[1].finish_reason
        or results[2].finish_reason != results[3].finish_reason
    }
    assert not reasons
    # The matrix measured something: calls came back, and thinking did.
    replies = [_reply(results[0]) for _, results in matrix]
    assert sum(1 for r in replies if r[2]) >= len(replies) - 3
    assert sum(1 for r in replies if r[1]) >= 8


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_turn_without_tools_keeps_call_markup_out(k25_server, stream) -> None:
    """After a tool-calling history, a turn that declares no tools: a call
    the model writes anyway is not returned, and none of it is content."""
    history = [
        *WEATHER_ROUND_TRIP,
        {"role": "user", "content": "Thanks. And Rome?"},
    ]
    output = (
        "Rome next.</think>Checking."
        + section(call("get_weather", '{"city": "Rome"}', 1))
        + tokens.IM_END
    )
    body = {
        "model": "tinykimi",
        "messages": history,
        "max_tokens": 60,
        "temperature": 0,
        "vllm_xargs": {"puppet_script": k25_server.tokenize(output)},
    }
    if stream:
        message, finish = accumulate_stream(
            k25_server.stream("/v1/chat/completions", body)
        )
    else:
        status, reply = k25_server.post("/v1/chat/completions", body)
        assert status == 200, reply
        message, finish = (
            reply["choices"][0]["message"],
            reply["choices"][0]["finish_reason"],
        )
    assert not message.get("tool_calls")
    assert message["content"] == "Checking."
    assert finish == "stop"
