# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""What the Enforcer must enforce for one request, as sent to the engine.

The ``kimi_k2_robust`` parser builds it in the API server (where the request's
tools, ``tool_choice`` and history are known) and puts it in the request's
``vllm_xargs`` under :data:`SPEC_KEY`; vLLM carries it to the engine in
``SamplingParams.extra_args``, where the logits processor reads it::

    {
        "v": 1,
        "first_index": 3,
        "choice": "auto",
        "parallel": true,
        "tools": [
            {"name": "get_weather", "grammar": "{...}", "lengths": null, "exact": true}
        ],
    }

``grammar`` is the JSON Schema text to compile; ``lengths`` the schema whose
string length bounds the Enforcer applies itself (null when there are none);
``exact`` false where the grammar is looser than the tool's schema (a call
may fail ``jsonschema``: the API server should validate it). ``reply``
(absent unless the request has a JSON ``response_format``): the same for the
reply's text, which is then either that JSON or tool calls::

        "reply": {"name": "", "grammar": "{...}", "lengths": null, "exact": true}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vllm_kimi_tools.envs import parse_switch

SPEC_KEY = "kimi_tools_enforcer"
# Per-request opt-out: ``"vllm_xargs": {"kimi_tools_enforce": false}``
# (``0``, ``"off"`` and ``"false"`` work too).
OPT_OUT_KEY = "kimi_tools_enforce"
SPEC_VERSION = 1

AUTO, REQUIRED, NAMED = "auto", "required", "named"


@dataclass(frozen=True)
class ToolGrammar:
    name: str
    grammar: str
    lengths: dict[str, Any] | None = None
    exact: bool = True


@dataclass(frozen=True)
class EnforcerSpec:
    tools: tuple[ToolGrammar, ...]
    first_index: int = 0
    choice: str = AUTO  # auto | required | named
    parallel: bool = True
    reply: ToolGrammar | None = None  # the text's JSON (response_format)

    def names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "v": SPEC_VERSION,
            "first_index": self.first_index,
            "choice": self.choice,
            "parallel": self.parallel,
            "tools": [_grammar_json(t) for t in self.tools],
        }
        if self.reply is not None:
            data["reply"] = _grammar_json(self.reply)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EnforcerSpec:
        """Parse a spec; ``ValueError`` for anything malformed."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"enforcer spec is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("enforcer spec must be a JSON object")
        if data.get("v") != SPEC_VERSION:
            raise ValueError(f"unsupported enforcer spec version {data.get('v')!r}")
        raw = data.get("tools")
        # Empty: tools were declared but none can be called in this request.
        if not isinstance(raw, list):
            raise ValueError("enforcer spec without a tools list")
        tools = [_grammar_from(t) for t in raw]
        reply = data.get("reply")
        choice = data.get("choice", AUTO)
        if choice not in (AUTO, REQUIRED, NAMED):
            raise ValueError(f"unknown tool choice {choice!r}")
        first = data.get("first_index", 0)
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise ValueError("enforcer spec: first_index must be a non-negative int")
        return cls(
            tools=tuple(tools),
            first_index=first,
            choice=choice,
            parallel=bool(data.get("parallel", True)),
            reply=None if reply is None else _grammar_from(reply),
        )


def _grammar_json(t: ToolGrammar) -> dict[str, Any]:
    return {
        "name": t.name,
        "grammar": t.grammar,
        "lengths": t.lengths,
        "exact": t.exact,
    }


def _grammar_from(t: Any) -> ToolGrammar:
    if not (
        isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("grammar"), str)
        and isinstance(t.get("lengths"), dict | None)
    ):
        raise ValueError("enforcer spec: malformed tool entry")
    return ToolGrammar(
        t["name"], t["grammar"], t.get("lengths"), t.get("exact") is not False
    )


def opted_out(value: Any) -> bool:
    """True when a request's ``kimi_tools_enforce`` xarg turns enforcement
    off (``false``, ``0``, ``"off"``, ...: read as the settings are)."""
    return parse_switch(value) is False
