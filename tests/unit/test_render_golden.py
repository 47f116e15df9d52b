# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Golden renders through vLLM's real HF renderer, over every Kimi template.

A messy conversation must render byte-identical to the same conversation
written canonically, on every Kimi template in ``../shared/anchors/kimi``
(K2-Instruct, K2-Instruct-0905 before and after Moonshot's fixes,
K2-Thinking) and on the test bed's K2.5 template with thinking on, off and
preserved, each ending with its generation prompt exactly once. The test-bed
model carries Moonshot's real tokenizer when ``../shared`` is there.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from tests.kimi_text import K25_SWITCHES

pytest.importorskip("vllm")

from kimi_testbed import tinykimi as testbed  # noqa: E402
from kimi_testbed.conversations import (  # noqa: E402
    CANONICAL,
    CANONICAL_REASONING,
    MESSY,
    MESSY_REASONING,
    TOOLS,
)
from tests.conftest import SHARED  # noqa: E402
from vllm_kimi_tools import tokens  # noqa: E402

TEMPLATES = sorted((SHARED / "anchors" / "kimi").glob("*.jinja"))
K25 = testbed.TEMPLATES["k25"]


CASES = [
    pytest.param(p, {}, tokens.GENERATION_PROMPT, id=p.stem[:40]) for p in TEMPLATES
] + [
    pytest.param(K25, {}, tokens.GENERATION_PROMPT_THINKING, id="k25-thinking"),
    pytest.param(
        K25, {"thinking": False}, tokens.GENERATION_PROMPT_NO_THINKING, id="k25-off"
    ),
    pytest.param(
        K25,
        {"preserve_thinking": True},
        tokens.GENERATION_PROMPT_THINKING,
        id="k25-preserve",
    ),
]


@pytest.fixture(scope="module")
def renderer(tinykimi: Path) -> Any:
    from vllm_kimi_tools.chat.render_cli import load_renderer

    return load_renderer(tinykimi)


def _render(
    renderer: Any, template: str, messages: list, *, hook: bool = True, **request
) -> str:
    from vllm_kimi_tools.chat.render_cli import render_request

    body = {"messages": messages, "tools": TOOLS, "chat_template": template}
    return render_request(renderer, {**body, **request}, hook=hook)


def _generation_tail(prompt: str) -> str:
    """What follows the last message: the generation prompt, once."""
    return prompt.rsplit(tokens.IM_END, 1)[1]


def _old_rule(prompt: str) -> str:
    # The hook's rule before K2.5: append unless it ends with K2's form.
    if prompt.endswith(tokens.GENERATION_PROMPT):
        return prompt
    return prompt + tokens.GENERATION_PROMPT


def test_testbed_model_has_the_real_tokenizer(real_tokenizer_dir, tinykimi) -> None:
    assert testbed.tokenizer_kind(tinykimi) == testbed.REAL


@pytest.mark.parametrize(("path", "kwargs", "expected"), CASES)
def test_messy_renders_like_canonical(
    renderer: Any, path: Path, kwargs: dict[str, Any], expected: str
) -> None:
    template = path.read_text()
    if ".append(" in template:
        # llama.cpp-modified copies mutate lists, which vLLM's (and HF's)
        # sandboxed Jinja rejects: they never render in vLLM, hooked or not.
        pytest.skip(f"{path.name} is not renderable by vLLM's sandboxed Jinja")
    request = {"chat_template_kwargs": kwargs}
    messy = _render(renderer, template, MESSY_REASONING, **request)
    canonical = _render(renderer, template, CANONICAL_REASONING, **request)
    assert messy == canonical
    assert "[{'type'" not in messy
    for bad in ("|>search:0", "call_9f2c", "functions_get_weather_1", "lost-id"):
        assert bad not in messy
    assert _generation_tail(messy) == expected
    if path == K25:
        # Every assistant turn is history here: reasoning only when preserved.
        preserve = bool(kwargs.get("preserve_thinking"))
        assert ("<think>Thought 0.</think>" in messy) is preserve
        assert ("Thought" in messy) is preserve


@K25_SWITCHES
def test_k25_generation_prompt_is_not_doubled(
    renderer: Any, kwargs: dict[str, Any], expected: str
) -> None:
    template = K25.read_text()
    request = {"chat_template_kwargs": kwargs}
    hooked = _render(renderer, template, CANONICAL, **request)
    stock = _render(renderer, template, CANONICAL, hook=False, **request)
    # A canonical conversation renders byte-identical to stock vLLM ...
    assert hooked == stock
    assert _generation_tail(hooked) == expected
    # ... which the old rule would have corrupted.
    assert _old_rule(stock) == stock + tokens.GENERATION_PROMPT


def test_k25_declares_tools_in_typescript(renderer: Any, tinykimi: Path) -> None:
    if testbed.tokenizer_kind(tinykimi) != testbed.REAL:
        pytest.skip("TypeScript declarations come from Moonshot's real tokenizer")
    spec = importlib.util.spec_from_file_location(
        "kimi_tool_declaration_ts", tinykimi / "tool_declaration_ts.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Moonshot's tokenizer sorts the tools' keys before converting them.
    sorted_tools = json.loads(json.dumps(TOOLS, sort_keys=True))
    declared = module.encode_tools_to_typescript_style(sorted_tools)
    assert "namespace functions {" in declared
    assert "type get_weather = (_: {" in declared
    block = f"{tokens.IM_SYSTEM}tool_declare{tokens.IM_MIDDLE}{declared}{tokens.IM_END}"
    prompt = _render(renderer, K25.read_text(), MESSY)
    assert prompt.startswith(block)
    assert '"type":"function"' not in prompt
    assert '"type": "function"' not in prompt
    # The stock path gets the same declarations: the tokenizer computes them.
    stock = _render(renderer, K25.read_text(), CANONICAL, hook=False)
    assert stock.startswith(block)


@pytest.mark.skipif(not TEMPLATES, reason="../shared/anchors/kimi not available")
def test_stock_rendering_differs_without_hook(renderer) -> None:
    """The hook is what makes the difference (so the golden test can fail)."""
    template = next(p for p in TEMPLATES if "prefix__llamacpp" in p.name).read_text()
    hooked = _render(renderer, template, MESSY)
    stock = _render(renderer, template, MESSY, hook=False)
    assert stock != hooked
    assert "call_9f2c" in stock


def test_k25_stock_rendering_differs_without_hook(renderer) -> None:
    template = K25.read_text()
    request = {"chat_template_kwargs": {"preserve_thinking": True}}
    hooked = _render(renderer, template, MESSY_REASONING, **request)
    stock = _render(renderer, template, MESSY_REASONING, hook=False, **request)
    assert "<think>Thought 0.</think>" in hooked
    # vLLM 0.32 reads only ``reasoning``: the client's reasoning_content is lost.
    assert "Thought 0." not in stock
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

    from kimi_testbed.conversations import with_string_arguments
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
    assert main(["render", str(request), "--model", str(tmp_path)]) == 2
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
