# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""``vllm-kimi-tools render REQUEST.json``: the exact prompt a request becomes.

Renders a Chat Completions request body through vLLM's own HF renderer twice,
as stock vLLM would (``before``) and with the kimi_k2_robust chat-template
hook (``after``), and prints both prompts with their differences marked.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path
from typing import Any

# The hook's switch (vllm_kimi_tools.envs), set for each of the two renders.
_SWITCH = "KIMI_TOOLS_NORMALIZE"

_RED, _GREEN, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[0m"


def _needs_remote_code(model: Path) -> bool:
    # A Kimi checkpoint's tokenizer is remote code (tokenization_kimi.py),
    # loaded as ``vllm serve --trust-remote-code`` loads it.
    config = model / "tokenizer_config.json"
    try:
        return "auto_map" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def load_renderer(model: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from vllm_kimi_tools import register
    from vllm_kimi_tools._compat import (
        ModelConfig,
        ToolParserManager,
        VllmConfig,
        renderer_from_config,
    )
    from vllm_kimi_tools.names import PARSER_NAME

    register()
    ToolParserManager.get_tool_parser(PARSER_NAME)  # as the server does
    model_config = ModelConfig(
        model=str(model), trust_remote_code=_needs_remote_code(model)
    )
    config = VllmConfig(model_config=model_config)
    return renderer_from_config(config)


def render_request(renderer: Any, request: dict[str, Any], hook: bool) -> str:
    from vllm_kimi_tools._compat import ChatParams

    kwargs = dict(request.get("chat_template_kwargs") or {})
    kwargs.setdefault(
        "add_generation_prompt", request.get("add_generation_prompt", True)
    )
    if request.get("continue_final_message"):
        kwargs["continue_final_message"] = True
        kwargs["add_generation_prompt"] = False
    if request.get("tools") and request.get("tool_choice") != "none":
        kwargs["tools"] = request["tools"]
    params = ChatParams(
        chat_template=request.get("chat_template"),
        chat_template_kwargs=kwargs,
    )
    previous = os.environ.get(_SWITCH)
    os.environ[_SWITCH] = "1" if hook else "0"
    try:
        _, prompt = renderer.render_messages(list(request["messages"]), params)
    finally:
        if previous is None:
            os.environ.pop(_SWITCH, None)
        else:
            os.environ[_SWITCH] = previous
    ids = prompt.get("prompt_token_ids")
    if ids is not None:
        return renderer.get_tokenizer().decode(ids, skip_special_tokens=False)
    return prompt["prompt"]


def _split(prompt: str) -> list[str]:
    # One line per special marker, so a diff points at the changed turn.
    out, line = [], ""
    i = 0
    while i < len(prompt):
        if prompt.startswith("<|", i) and (end := prompt.find("|>", i)) != -1:
            line += prompt[i : end + 2]
            i = end + 2
            if line.endswith(("<|im_end|>", "<|tool_call_end|>")):
                out.append(line)
                line = ""
            continue
        line += prompt[i]
        i += 1
    if line:
        out.append(line)
    return out


def diff_prompts(before: str, after: str, color: bool) -> str:
    lines = []
    for line in difflib.unified_diff(
        _split(before), _split(after), "before", "after", lineterm="", n=1
    ):
        if color and line.startswith("-") and not line.startswith("---"):
            line = _RED + line + _RESET
        elif color and line.startswith("+") and not line.startswith("+++"):
            line = _GREEN + line + _RESET
        lines.append(line)
    return "\n".join(lines) if lines else "(no differences)"


def run(request_path: str, model: str, color: bool | None = None) -> int:
    request = json.loads(Path(request_path).read_text())
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        print(
            "error: REQUEST.json must be a chat request with 'messages'",
            file=sys.stderr,
        )
        return 2
    renderer = load_renderer(Path(model))
    before = render_request(renderer, request, hook=False)
    after = render_request(renderer, request, hook=True)
    if color is None:
        color = sys.stdout.isatty()
    print("=== before (stock vLLM) ===")
    print(before)
    print("\n=== after (kimi_k2_robust) ===")
    print(after)
    print("\n=== differences ===")
    print(diff_prompts(before, after, color))
    return 0
