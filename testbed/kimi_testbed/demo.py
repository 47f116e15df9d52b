# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""``python -m kimi_testbed.demo`` (``bash scripts/dev.sh demo``): the main job.

Builds the tiny local Kimi-format model, starts a real
``vllm serve --tool-call-parser kimi_k2_robust`` on CPU and sends one chat
request with tools. The test-bed puppet makes the model write a call the way
Kimi K2 sometimes does (a history-style id ``get_weather:7``, no
``functions.`` prefix), respecting the Enforcer's masks as a real model
would; the response shows what a client receives.
"""

from __future__ import annotations

import json
import sys
import time

from kimi_testbed.paths import cache_dir
from kimi_testbed.server import PUPPET, VllmServer
from kimi_testbed.tinykimi import describe, ensure_tinykimi
from vllm_kimi_tools.names import PARSER_NAME
from vllm_kimi_tools.tokens import (
    IM_END,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALLS_SECTION_BEGIN,
    TOOL_CALLS_SECTION_END,
)

DEMO_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
DEMO_OUTPUT = (
    "Let me check."
    + TOOL_CALLS_SECTION_BEGIN
    + TOOL_CALL_BEGIN
    + "get_weather:7"
    + TOOL_CALL_ARGUMENT_BEGIN
    + '{"city": "Tokyo"}'
    + TOOL_CALL_END
    + TOOL_CALLS_SECTION_END
    + IM_END
)


def main() -> int:
    cache = cache_dir()
    t0 = time.monotonic()
    model = ensure_tinykimi(cache / "tinykimi")
    print(f"model: {model} (ready in {time.monotonic() - t0:.1f}s)")
    print(f"tokenizer: {describe(model)}")
    serve_args = [
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        PARSER_NAME,
        "--logits-processors",
        PUPPET,
    ]
    log = cache / "logs" / "demo-server.log"
    print("starting: vllm serve", model, " ".join(serve_args))
    t0 = time.monotonic()
    with VllmServer(model, serve_args, cache_dir=cache, log_path=log) as server:
        print(f"server ready in {time.monotonic() - t0:.1f}s (log: {log})")
        script = server.tokenize(DEMO_OUTPUT)
        request = {
            "model": "tinykimi",
            "messages": [{"role": "user", "content": "What's the weather in Tokyo?"}],
            "tools": DEMO_TOOLS,
            "max_tokens": 64,
            "temperature": 0,
            # Like a real model, the puppet respects the Enforcer's masks.
            "vllm_xargs": {"puppet_script": script, "puppet_mode": "intend"},
        }
        print("\nmodel intends to write (scripted):", DEMO_OUTPUT)
        status, body = server.post("/v1/chat/completions", request)
        if status != 200:
            print(f"request failed: HTTP {status}: {body}", file=sys.stderr)
            return 1
        choice = body["choices"][0]
        print("\nresponse:")
        print(json.dumps(choice["message"], indent=2, ensure_ascii=False))
        print("finish_reason:", choice["finish_reason"])
        calls = choice["message"].get("tool_calls") or []
        ok = (
            choice["finish_reason"] == "tool_calls"
            and len(calls) == 1
            and calls[0]["id"] == "functions.get_weather:0"
            and json.loads(calls[0]["function"]["arguments"]) == {"city": "Tokyo"}
            and "<|" not in (choice["message"].get("content") or "")
        )
        print("\ndemo", "OK" if ok else "FAILED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
