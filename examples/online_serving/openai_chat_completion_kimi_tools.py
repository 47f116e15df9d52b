# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Chat with tools against a Kimi model served with ``kimi_k2_robust``.

Start the server first::

    vllm serve moonshotai/Kimi-K2-Instruct-0905 --trust-remote-code \
        --enable-auto-tool-choice --tool-call-parser kimi_k2_robust

then run ``python openai_chat_completion_kimi_tools.py [--stream]``.
"""

from __future__ import annotations

import argparse
import json

from openai import OpenAI

openai_api_key = "EMPTY"
openai_api_base = "http://localhost:8000/v1"

TOOLS = [
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    client = OpenAI(api_key=openai_api_key, base_url=openai_api_base)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "What's the weather in Tokyo?"}]
    if not args.stream:
        response = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS
        )
        choice = response.choices[0]
        print("finish_reason:", choice.finish_reason)
        for call in choice.message.tool_calls or []:
            print(call.id, call.function.name, json.loads(call.function.arguments))
        return
    calls: dict[int, dict[str, str]] = {}
    for chunk in client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, stream=True
    ):
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
            slot["id"] = call.id or slot["id"]
            slot["name"] = call.function.name or slot["name"]
            slot["args"] += call.function.arguments or ""
    for slot in calls.values():
        print(slot["id"], slot["name"], json.loads(slot["args"]))


if __name__ == "__main__":
    main()
