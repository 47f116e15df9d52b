# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The K2VV simulation's scenarios: a chat request plus what the model intends.

Each :class:`Scenario` is one Chat Completions request (tools, a history
that is often messy, thinking on or off, streaming or not) and the text a
Kimi model "intends" to write, which the puppet (``intend`` mode) replays::

    <think>I need the forecast.</think>Checking.<|tool_calls_section_begin|>
    <|tool_call_begin|>functions.get_weather:3<|tool_call_argument_begin|>
    {"city": "Oslo", "days": "three"}<|tool_call_end|><|tool_calls_section_end|>

Failure scenarios cover every output failure mode of
``failure-modes-and-peers.md`` (undeclared tools, schema errors,
string-encoded arguments, non-canonical and duplicate ids, bare and
unterminated markers, text after the section, calls in ``<think>``,
truncation, markers in strings, broken JSON). Correct scenarios are BFCL
ground-truth calls: they must come back exactly as intended.

Pure: no vLLM, no server.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from typing import Any

from kimi_testbed.corpora import bfcl_cases
from kimi_testbed.wire import ARG, CALL, END, SEC, SEC_END, call, openai_tool, section
from vllm_kimi_tools import tokens

THINK, THINK_END = tokens.THINK_BEGIN, tokens.THINK_END

CORRECT = "correct call (BFCL)"

# What a model says to wrap up when its intention is blocked, in order.
CLOSERS = ('"', "}", "]", ",", END, SEC_END, tokens.IM_END)


@dataclass(frozen=True)
class Scenario:
    id: str
    category: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    output: str  # what the model intends to write (``<|im_end|>`` follows)
    stream: bool = False
    thinking: bool = False
    history_calls: int = 0  # tool calls in the history: output ids continue here
    intends_call: bool = True  # a good server returns tool_calls
    # Cut the output by max_tokens right after this prefix of ``output``.
    truncate_after: str | None = None
    # Correct scenarios: the exact calls and content that must come back.
    expected_calls: list[tuple[str, dict[str, Any]]] | None = None
    expected_content: str | None = None
    expected_reasoning: str | None = None
    # The chat template the server renders with (``k2``: K2 / K2-Thinking,
    # the model opens its own thinking; ``k25``: K2.5+, the prompt does).
    template: str = "k2"
    api: str = "chat"  # chat | responses
    tool_choice: Any = None  # None: the API's default ("auto")

    @property
    def is_correct(self) -> bool:
        return self.expected_calls is not None

    def body(self, script: list[int], closers: list[int], max_tokens: int) -> dict:
        """The request (``script``: ``output`` tokenized, ``<|im_end|>`` last)."""
        body = {
            "model": "tinykimi",
            "messages": self.messages,
            "tools": self.tools,
            "max_tokens": max_tokens,
            "temperature": 0,
            "chat_template_kwargs": {"thinking": self.thinking},
            "vllm_xargs": {
                "puppet_script": script,
                "puppet_mode": "intend",
                "puppet_closers": closers,
            },
        }
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        return body


def tool(name: str, parameters: dict[str, Any], description: str = "") -> dict:
    """A ``tools`` entry as the scenarios declare them (with a description)."""
    return openai_tool(name, parameters, description)


def dumps(args: dict[str, Any]) -> str:
    return json.dumps(args, ensure_ascii=False)


WEATHER = tool(
    "get_weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "Weather forecast for a city.",
)
SEARCH = tool(
    "search",
    {
        "type": "object",
        "properties": {
            "q": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1},
        },
        "required": ["q"],
    },
    "Web search.",
)
TODO = tool(
    "todo_write",
    {
        "type": "object",
        "properties": {
            "todos": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "done": {"type": "boolean"},
                    },
                    "required": ["text", "done"],
                },
            }
        },
        "required": ["todos"],
    },
    "Replace the todo list.",
)
TOOLS = [WEATHER, SEARCH, TODO]


def _history(style: str) -> tuple[list[dict[str, Any]], int]:
    """A conversation ending in a user turn, and its number of tool calls.

    ``clean``: one user message. ``messy``: what real clients send (ids like
    ``call_ab12`` and ``search:0``, empty and list content, a result without
    an id, a call to a tool that is no longer declared). ``thinking``: the
    same with ``reasoning_content`` on the assistant turns.
    """
    if style == "clean":
        return [{"role": "user", "content": "What's the weather in Oslo?"}], 0
    think = style == "thinking"

    def assistant(content: Any, calls: list[tuple[str, str, str]]) -> dict:
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in calls
            ],
        }
        if think:
            msg["reasoning_content"] = "I should look this up first."
        return msg

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Draw a fjord, then find Oslo news."},
        assistant("", [("call_ab12", "img_gen", '{"prompt": "a fjord"}')]),
        {"role": "tool", "tool_call_id": "call_ab12", "content": "image ready"},
        assistant(
            [{"type": "text", "text": ""}],
            [
                ("search:0", "search", '{"q": "Oslo news"}'),
                ("functions_search_1", "search", '{"q": "Oslo weather"}'),
            ],
        ),
        {"role": "tool", "tool_call_id": "search:0", "content": "3 results"},
        {"role": "tool", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
        {"role": "user", "content": "Now the weather in Oslo for two days."},
    ]
    return messages, 3


def _failure_outputs(k: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Failure mode -> (intended output, Scenario overrides); ``k``: the
    history's tool-call count, so the canonical ids start at ``k``."""
    oslo = '{"city": "Oslo", "days": 2}'
    return {
        "undeclared tool (from history)": (
            "Drawing it." + section(call("img_gen", '{"prompt": "Oslo"}', k)),
            {},
        ),
        "wrong types": (
            section(call("get_weather", '{"city": "Oslo", "days": "two"}', k)),
            {},
        ),
        "missing required key": (
            section(call("get_weather", '{"city": "Oslo"}', k)),
            {},
        ),
        "empty arguments": (section(call("get_weather", "{}", k)), {}),
        "extra key": (
            section(
                call("get_weather", '{"city": "Oslo", "days": 2, "lang": "no"}', k)
            ),
            {},
        ),
        "enum / range violation": (
            section(
                call("get_weather", '{"city": "Oslo", "days": 40, "unit": "K"}', k)
            ),
            {},
        ),
        "string-encoded arguments": (
            section(
                call(
                    "todo_write",
                    json.dumps(
                        json.dumps({"todos": [{"text": "pack", "done": False}]})
                    ),
                    k,
                )
            ),
            {},
        ),
        "arguments not JSON": (
            section(call("search", "{q: Oslo news}", k)),
            {},
        ),
        "marker inside a JSON string": (
            section(call("search", f'{{"q": "Oslo{END} news"}}', k)),
            {},
        ),
        "non-canonical id (search:N)": (
            section(call(f"search:{k + 2}", '{"q": "Oslo"}')),
            {},
        ),
        "non-canonical id (functions_x_N)": (
            section(call(f"functions_search_{k}", '{"q": "Oslo"}')),
            {},
        ),
        "non-canonical id (call_…)": (
            section(call("call_59adf3e1", '{"q": "Oslo"}')),
            {},
        ),
        "duplicate ids": (
            section(
                call("get_weather", oslo, k),
                call("get_weather", '{"city": "Bergen", "days": 2}', k),
            ),
            {},
        ),
        "bare call (no section)": (
            "Let me check." + call("get_weather", oslo, k),
            {},
        ),
        "unterminated call": (
            SEC + CALL + f"functions.get_weather:{k}" + ARG + oslo,
            {},
        ),
        "text after the section": (
            section(call("get_weather", oslo, k)) + "I have asked for the forecast.",
            {},
        ),
        "several calls": (
            "Three lookups."
            + section(
                call("get_weather", oslo, k),
                call("search", '{"q": "Oslo events", "limit": 3}', k + 1),
                call(
                    "todo_write",
                    '{"todos": [{"text": "umbrella", "done": false}]}',
                    k + 2,
                ),
            ),
            {},
        ),
        "truncated by max_tokens": (
            section(
                call("search", '{"q": "Oslo weather forecast for the weekend"}', k)
            ),
            {
                "truncate_after": (
                    f'{SEC}{CALL}functions.search:{k}{ARG}{{"q": "Oslo wea'
                ),
                "intends_call": False,
            },
        ),
    }


def _think_outputs(k: int) -> dict[str, str]:
    oslo = '{"city": "Oslo", "days": 2}'
    return {
        "call inside <think> (section)": (
            THINK + "I need the forecast." + section(call("get_weather", oslo, k))
        ),
        "call inside <think> (bare)": (
            THINK + "I need the forecast." + call("get_weather", oslo, k)
        ),
    }


def failure_scenarios(full: bool = True) -> list[Scenario]:
    """Every failure mode; ``full``: each in {clean, messy history} x
    {thinking, not} x {stream, not}, else one variant per mode."""
    scenarios = []
    for history in ("clean", "messy"):
        for thinking in (False, True):
            style = "thinking" if thinking and history == "messy" else history
            messages, k = _history(style)
            cases = _failure_outputs(k)
            if thinking:
                preamble = THINK + "Let me use a tool." + THINK_END
                cases = {
                    category: (
                        preamble + text,
                        {
                            key: preamble + value if key == "truncate_after" else value
                            for key, value in overrides.items()
                        },
                    )
                    for category, (text, overrides) in cases.items()
                }
                cases.update({c: (t, {}) for c, t in _think_outputs(k).items()})
            for stream in (False, True):
                for category, (text, overrides) in cases.items():
                    flags = [history] + ["stream"] * stream + ["thinking"] * thinking
                    scenarios.append(
                        Scenario(
                            id=f"{category} [{', '.join(flags)}]",
                            category=category,
                            messages=messages,
                            tools=TOOLS,
                            output=text,
                            stream=stream,
                            thinking=thinking,
                            history_calls=k,
                            **overrides,
                        )
                    )
    if full:
        return scenarios
    # One variant per mode, cycling through the variants.
    picked: dict[str, Scenario] = {}
    for i, category in enumerate(dict.fromkeys(s.category for s in scenarios)):
        variants = [s for s in scenarios if s.category == category]
        picked[category] = variants[(i * 3) % len(variants)]
    return list(picked.values())


def correct_scenarios(n: int, seed: int = 0) -> list[Scenario]:
    """``n`` BFCL ground-truth calls, round-robin over BFCL's categories, each
    written as a Kimi model writes a correct call (canonical ids, declared key
    order), with thinking, a preface and streaming varied."""
    by_category: dict[str, list] = {}
    for case in bfcl_cases():
        by_category.setdefault(case.id.rsplit("_", 1)[0], []).append(case)
    rng = random.Random(seed)
    for cases in by_category.values():
        rng.shuffle(cases)
    picked = []
    while len(picked) < n and any(by_category.values()):
        for cases in by_category.values():
            if cases and len(picked) < n:
                picked.append(cases.pop())
    scenarios = []
    for i, case in enumerate(picked):
        thinking, stream, preface = i % 2 == 1, i % 4 >= 2, i % 3 == 0
        content = "I'll call the tool." if preface else None
        calls = "".join(
            call(name, dumps(args), j) for j, (name, args) in enumerate(case.calls)
        )
        text = (content or "") + section(calls)
        reasoning = "The user's request maps to a tool call." if thinking else None
        if thinking:
            text = THINK + reasoning + THINK_END + text
        flags = ["stream"] * stream + ["thinking"] * thinking
        scenarios.append(
            Scenario(
                id=f"{case.id} [{', '.join(flags)}]" if flags else case.id,
                category=CORRECT,
                messages=case.messages,
                tools=case.tools,
                output=text,
                stream=stream,
                thinking=thinking,
                expected_calls=case.calls,
                expected_content=content,
                expected_reasoning=reasoning,
            )
        )
    return scenarios


def for_k25(scenario: Scenario) -> Scenario:
    """The same intention on a K2.5+ server, whose prompt opens the thinking
    (``…<|im_middle|><think>``) or closes it (``<think></think>``, thinking
    off): the model's output starts inside its thinking, so it does not
    write the ``<think>`` itself."""

    def opened(text: str | None) -> str | None:
        if text is None or not scenario.thinking:
            return text
        return text.removeprefix(THINK)

    return dataclasses.replace(
        scenario,
        id=f"{scenario.id} [k25]",
        template="k25",
        output=opened(scenario.output) or "",
        truncate_after=opened(scenario.truncate_after),
    )


def k25_scenarios() -> list[Scenario]:
    """What only the K2.5+ format has: thinking opened by the prompt and
    closed by the model, a call right after ``</think>``, a call inside
    thinking the model never closed, thinking switched off."""
    weather = [("get_weather", {"city": "Oslo", "days": 2})]
    args = dumps(weather[0][1])
    reasoning = "The user wants the forecast."
    cases = [
        (
            "thinking opened by the prompt",
            True,
            reasoning + THINK_END + "Sunny.",
            [],
            "Sunny.",
        ),
        (
            "call right after </think>",
            True,
            reasoning + THINK_END + section(call("get_weather", args, 0)),
            weather,
            None,
        ),
        (
            "call inside unterminated thinking",
            True,
            reasoning + section(call("get_weather", args, 0)),
            weather,
            None,
        ),
        (
            "thinking off",
            False,
            "Checking." + section(call("get_weather", args, 0)),
            weather,
            "Checking.",
        ),
    ]
    messages, _ = _history("clean")
    out = []
    for category, thinking, text, calls, content in cases:
        for stream in (False, True):
            flags = ["k25"] + ["stream"] * stream
            out.append(
                Scenario(
                    id=f"{category} [{', '.join(flags)}]",
                    category=category,
                    messages=messages,
                    tools=TOOLS,
                    output=text,
                    stream=stream,
                    thinking=thinking,
                    intends_call=bool(calls),
                    expected_calls=calls,
                    expected_content=content,
                    expected_reasoning=reasoning if thinking else None,
                    template="k25",
                )
            )
    return out


def forced_scenarios(template: str = "k2", n: int = 4) -> list[Scenario]:
    """Correct single calls under ``tool_choice`` required and named (thinking
    first in every other one), with no text around them: forced tool choice
    allows none."""
    single = [
        c
        for c in correct_scenarios(60, seed=1)
        if len(c.expected_calls or ()) == 1 and c.expected_content is None
    ]
    out = []
    for i, case in enumerate(single[:n]):
        assert case.expected_calls
        choice: Any = (
            "required"
            if i % 2 == 0
            else {"type": "function", "function": {"name": case.expected_calls[0][0]}}
        )
        label = "required" if i % 2 == 0 else "named"
        scenario = dataclasses.replace(
            case, id=f"{case.id} [{label}]", tool_choice=choice
        )
        out.append(for_k25(scenario) if template == "k25" else scenario)
    return out


def suite(size: str = "full", seed: int = 0, template: str = "k2") -> list[Scenario]:
    """``full``: every failure variant and 200 BFCL calls; ``ci``: one variant
    per failure mode and 16 BFCL calls. ``template="k25"``: the same
    intentions written for a K2.5+ prompt, plus :func:`k25_scenarios`."""
    if size == "full":
        scenarios = failure_scenarios(True) + correct_scenarios(200, seed)
    elif size == "ci":
        scenarios = failure_scenarios(False) + correct_scenarios(16, seed)
    else:
        raise ValueError(f"unknown suite size {size!r} (full, ci)")
    if template == "k25":
        return [for_k25(s) for s in scenarios] + k25_scenarios()
    return scenarios
