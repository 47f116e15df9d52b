# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The test bed's K2.5 / K2.6 template (a reconstruction from the rules).

First its rules, rendered by Hugging Face's own Jinja renderer; then the
template as a K2.5 checkpoint's own (``tinykimi-k25``), through vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kimi_testbed.conversations import CANONICAL, MESSY_REASONING, TOOLS
from kimi_testbed.tinykimi import TEMPLATES
from tests.kimi_text import K25_SWITCHES
from vllm_kimi_tools import tokens

TEMPLATE = TEMPLATES["k25"].read_text()
TS_TOOLS = "# Tools\n\n## functions\nnamespace functions {\n// stub\n}\n"


def _render(messages: list[dict[str, Any]], **kwargs: Any) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    kwargs.setdefault("add_generation_prompt", True)
    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=TEMPLATE, **kwargs
    )
    return rendered[0]


def _call(idx: int) -> dict[str, Any]:
    return {
        "id": f"functions.get_weather:{idx}",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }


# A finished turn (history), then the current tool loop (suffix).
AGENTIC = [
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning": "HIST"},
    {"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "reasoning": "NOW", "tool_calls": [_call(0)]},
    {
        "role": "tool",
        "tool_call_id": "functions.get_weather:0",
        "name": "get_weather",
        "content": "cold",
    },
]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, tokens.GENERATION_PROMPT_THINKING),
        ({"thinking": True}, tokens.GENERATION_PROMPT_THINKING),
        ({"thinking": False}, tokens.GENERATION_PROMPT_NO_THINKING),
        ({"preserve_thinking": True}, tokens.GENERATION_PROMPT_THINKING),
    ],
    ids=["default", "on", "off", "preserve"],
)
def test_generation_prompt_opens_thinking(
    kwargs: dict[str, Any], expected: str
) -> None:
    prompt = _render(CANONICAL[:2], **kwargs)
    assert prompt.endswith(tokens.IM_END + expected)


def test_no_generation_prompt_unless_asked() -> None:
    assert _render(CANONICAL[:2], add_generation_prompt=False).endswith(
        "Find news and weather.<|im_end|>"
    )


def test_history_reasoning_collapses_and_current_loop_keeps_it() -> None:
    prompt = _render(AGENTIC)
    assert "HIST" not in prompt
    assert "<|im_middle|><think></think>4<|im_end|>" in prompt
    assert "<think>NOW</think><|tool_calls_section_begin|>" in prompt


@pytest.mark.parametrize("thinking", [True, False])
def test_preserve_thinking_keeps_every_turn(thinking: bool) -> None:
    prompt = _render(AGENTIC, preserve_thinking=True, thinking=thinking)
    assert "<|im_middle|><think>HIST</think>4<|im_end|>" in prompt
    assert "<think>NOW</think><|tool_calls_section_begin|>" in prompt


def test_reasoning_content_is_read_too() -> None:
    messages = [dict(m) for m in AGENTIC]
    messages[1]["reasoning_content"] = messages[1].pop("reasoning")
    assert "<think>HIST</think>4" in _render(messages, preserve_thinking=True)


def test_tools_typescript_when_given_else_json() -> None:
    typescript = _render(CANONICAL[:2], tools=TOOLS, tools_ts_str=TS_TOOLS)
    assert typescript.startswith(
        f"{tokens.IM_SYSTEM}tool_declare{tokens.IM_MIDDLE}{TS_TOOLS}{tokens.IM_END}"
        f"{tokens.IM_SYSTEM}system{tokens.IM_MIDDLE}You are helpful."
    )
    assert '"type":"function"' not in typescript
    fallback = _render(CANONICAL[:2], tools=TOOLS)
    assert fallback.startswith(
        f'{tokens.IM_SYSTEM}tool_declare{tokens.IM_MIDDLE}[{{"type":"function",'
    )
    assert "tool_declare" not in _render(CANONICAL[:2])


def test_default_system_prompt_and_tool_results() -> None:
    prompt = _render(AGENTIC)
    assert prompt.startswith(
        "<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by "
        "Moonshot AI.<|im_end|><|im_user|>user<|im_middle|>2+2?<|im_end|>"
    )
    assert (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city":"Oslo"}<|tool_call_end|>'
        "<|tool_calls_section_end|><|im_end|>"
        "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\n"
        "cold<|im_end|>"
    ) in prompt


# --- the template as a K2.5 checkpoint's own, through vLLM -----------------


@pytest.fixture(scope="module")
def k25_renderer(cache_dir: Path) -> Any:
    pytest.importorskip("vllm")
    pytest.importorskip("torch")
    from kimi_testbed.tinykimi import ensure_tinykimi
    from vllm_kimi_tools.chat.render_cli import load_renderer

    return load_renderer(ensure_tinykimi(cache_dir / "tinykimi-k25", template="k25"))


def _vllm_render(renderer: Any, messages: list, *, hook: bool = True, **kw) -> str:
    from vllm_kimi_tools.chat.render_cli import render_request

    request = {"messages": messages, "tools": TOOLS, "chat_template_kwargs": kw}
    return render_request(renderer, request, hook=hook)


@K25_SWITCHES
def test_checkpoint_template_renders_as_stock(
    k25_renderer: Any, kwargs: dict[str, Any], expected: str
) -> None:
    hooked = _vllm_render(k25_renderer, CANONICAL, **kwargs)
    assert hooked == _vllm_render(k25_renderer, CANONICAL, hook=False, **kwargs)
    assert hooked.rsplit(tokens.IM_END, 1)[1] == expected


def test_checkpoint_template_preserves_client_reasoning(k25_renderer: Any) -> None:
    prompt = _vllm_render(k25_renderer, MESSY_REASONING, preserve_thinking=True)
    for i in range(3):
        assert f"<think>Thought {i}.</think>" in prompt
    collapsed = _vllm_render(k25_renderer, MESSY_REASONING)
    assert "Thought" not in collapsed
