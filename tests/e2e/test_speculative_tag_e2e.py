# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Speculative decoding (ngram, CPU) with ``KIMI_TOOLS_SPECULATIVE_TAG=1``:
the Enforcer cannot run, and vLLM's structured outputs carry the plugin's
structural tag instead of xgrammar's builtin ``kimi`` one. The random model
decodes under it (no puppet loads under speculation): the call section opens
at once for ``tool_choice="required"``, the header is a declared name with
the index continuing the history, and no marker is written inside the
arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from kimi_testbed.conversations import WEATHER_ROUND_TRIP  # noqa: E402
from kimi_testbed.server import VllmServer  # noqa: E402
from tests.kimi_text import WEATHER_TOOL  # noqa: E402
from vllm_kimi_tools import tokens as kt  # noqa: E402

NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 3,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}
HISTORY = [*WEATHER_ROUND_TRIP, {"role": "user", "content": "And in Paris?"}]


@pytest.fixture(scope="module")
def tag_server(tinykimi: Path, cache_dir: Path) -> Iterator[VllmServer]:
    args = [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "kimi_k2_robust",
        "--speculative-config",
        json.dumps(NGRAM),
    ]
    log = cache_dir / "logs" / "e2e-speculative-tag.log"
    env = {"KIMI_TOOLS_SPECULATIVE_TAG": "1"}
    with VllmServer(tinykimi, args, cache_dir=cache_dir, log_path=log, env=env) as s:
        yield s


def _ask(server: VllmServer, **kw) -> dict:
    body = {
        "model": "tinykimi",
        "messages": HISTORY,
        "tools": [WEATHER_TOOL],
        "max_tokens": 64,
        "temperature": 0,
        "return_token_ids": True,
        **kw,
    }
    status, out = server.post("/v1/chat/completions", body)
    assert status == 200, out
    return out["choices"][0]


def test_the_plugins_tag_shapes_the_call_under_speculation(tag_server) -> None:
    ids = kt.SPECIAL_TOKEN_IDS
    out = _ask(tag_server, tool_choice="required")["token_ids"]
    assert out[:2] == [ids[kt.TOOL_CALLS_SECTION_BEGIN], ids[kt.TOOL_CALL_BEGIN]]
    arg = out.index(ids[kt.TOOL_CALL_ARGUMENT_BEGIN])
    header = tag_server.post(
        "/detokenize", {"model": "tinykimi", "tokens": out[2:arg]}
    )[1]["prompt"]
    assert header == "functions.get_weather:1"  # the history holds call 0
    args = out[arg + 1 :]
    if ids[kt.TOOL_CALL_END] in args:
        args = args[: args.index(ids[kt.TOOL_CALL_END])]
    # Markers, chat and reserved tokens (their text starts "<|"): none.
    assert not [
        t
        for t in args
        if t >= kt.NUM_BASE_TOKENS and kt.special_token_text(t).startswith("<|")
    ]
    # "auto" gets the tag too (vLLM's own gives it none by default): the
    # random model's favourite markers are still written as free text, the
    # tool markup is not.
    free = _ask(tag_server)["token_ids"]
    stray = {ids[kt.TOOL_CALL_ARGUMENT_BEGIN], ids[kt.TOOL_CALL_END]}
    assert not stray & set(free)
    log = tag_server.log_path.read_text(errors="replace")
    assert log.count("the tool Enforcer cannot run on this server") == 1
    assert "the plugin's structural tag" in log
