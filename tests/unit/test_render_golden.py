# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Golden renders through vLLM's real HF renderer, over Moonshot's templates.

A messy conversation must render byte-identical to the same conversation
written canonically, on every Kimi template in ``../shared/anchors/kimi``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from tests.conftest import SHARED  # noqa: E402
from tests.conversations import CANONICAL, MESSY, TOOLS  # noqa: E402
from vllm_kimi_tools import tokens  # noqa: E402

TEMPLATES = sorted((SHARED / "anchors" / "kimi").glob("*.jinja"))


@pytest.fixture(scope="module")
def renderer(tinykimi: Path) -> Any:
    from vllm_kimi_tools.render_cli import load_renderer

    return load_renderer(tinykimi)


def _render(
    renderer: Any, template: str, messages: list, *, hook: bool = True, **request
) -> str:
    from vllm_kimi_tools.render_cli import render_request

    body = {"messages": messages, "tools": TOOLS, "chat_template": template}
    return render_request(renderer, {**body, **request}, hook=hook)


@pytest.mark.skipif(not TEMPLATES, reason="../shared/anchors/kimi not available")
@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.stem[:40])
def test_messy_renders_like_canonical(renderer: Any, path: Path) -> None:
    template = path.read_text()
    if ".append(" in template:
        # llama.cpp-modified copies mutate lists, which vLLM's (and HF's)
        # sandboxed Jinja rejects: they never render in vLLM, hooked or not.
        pytest.skip(f"{path.name} is not renderable by vLLM's sandboxed Jinja")
    messy = _render(renderer, template, MESSY)
    canonical = _render(renderer, template, CANONICAL)
    assert messy == canonical
    assert "[{'type'" not in messy
    for bad in ("|>search:0", "call_9f2c", "functions_get_weather_1", "lost-id"):
        assert bad not in messy
    assert messy.endswith(tokens.GENERATION_PROMPT)


@pytest.mark.skipif(not TEMPLATES, reason="../shared/anchors/kimi not available")
def test_stock_rendering_differs_without_hook(renderer) -> None:
    """The hook is what makes the difference (so the golden test can fail)."""
    template = next(p for p in TEMPLATES if "prefix__llamacpp" in p.name).read_text()
    hooked = _render(renderer, template, MESSY)
    stock = _render(renderer, template, MESSY, hook=False)
    assert stock != hooked
    assert "call_9f2c" in stock


def test_continue_final_message_gets_no_generation_prompt(renderer, tinykimi) -> None:
    template = (tinykimi / "chat_template.jinja").read_text()
    messages = [*CANONICAL[:2], {"role": "assistant", "content": "Partial"}]
    text = _render(
        renderer,
        template,
        messages,
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert not text.endswith(tokens.GENERATION_PROMPT)


def test_template_without_generation_prompt_gets_one(renderer) -> None:
    template = (
        "{% for m in messages %}<|im_user|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    text = _render(renderer, template, [{"role": "user", "content": "hi"}])
    assert text.endswith(tokens.GENERATION_PROMPT)


def test_render_cli_prints_before_after_and_diff(tinykimi, tmp_path, capsys) -> None:
    import json

    from tests.conversations import with_string_arguments
    from vllm_kimi_tools.cli import main

    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"messages": with_string_arguments(MESSY), "tools": TOOLS})
    )
    assert main(["render", str(request), "--model", str(tinykimi)]) == 0
    out = capsys.readouterr().out
    before, after = out.split("=== after (kimi_k2_robust) ===")
    assert "<|tool_call_begin|>call_9f2c" in before
    assert "call_9f2c" not in after.split("=== differences ===")[0]
    assert "+<|tool_call_begin|>functions.open_url:1" in out
    assert (
        after.split("=== differences ===")[0].strip().endswith(tokens.GENERATION_PROMPT)
    )


def test_render_cli_rejects_non_chat_request(tmp_path, capsys) -> None:
    from vllm_kimi_tools.cli import main

    request = tmp_path / "request.json"
    request.write_text('{"prompt": "hi"}')
    assert main(["render", str(request)]) == 2
    assert "messages" in capsys.readouterr().err


@pytest.mark.skipif(not TEMPLATES, reason="../shared/anchors/kimi not available")
def test_reasoning_content_reaches_thinking_template(renderer) -> None:
    path = next(p for p in TEMPLATES if "Thinking_HF-official" in p.name)
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I should call get_weather.",
            "tool_calls": [
                {
                    "id": "get_weather:0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"X"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "get_weather:0", "content": "sunny"},
    ]
    hooked = _render(renderer, path.read_text(), messages)
    assert "<think>I should call get_weather.</think>" in hooked
    stock = _render(renderer, path.read_text(), messages, hook=False)
    assert "I should call get_weather." not in stock
