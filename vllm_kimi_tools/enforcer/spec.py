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
        "tools": [{"name": "get_weather", "grammar": "{...}", "lengths": null}],
    }

``grammar`` is the JSON Schema text to compile; ``lengths`` the schema whose
string length bounds the Enforcer applies itself (null when there are none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class EnforcerSpec:
    tools: tuple[ToolGrammar, ...]
    first_index: int = 0
    choice: str = AUTO  # auto | required | named
    parallel: bool = True

    def names(self) -> list[str]:
        return [tool.name for tool in self.tools]

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": SPEC_VERSION,
                "first_index": self.first_index,
                "choice": self.choice,
                "parallel": self.parallel,
                "tools": [
                    {"name": t.name, "grammar": t.grammar, "lengths": t.lengths}
                    for t in self.tools
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> EnforcerSpec:
        data = json.loads(text)
        if data.get("v") != SPEC_VERSION:
            raise ValueError(f"unsupported enforcer spec version {data.get('v')!r}")
        tools = tuple(
            ToolGrammar(t["name"], t["grammar"], t.get("lengths"))
            for t in data["tools"]
        )
        if not tools:
            raise ValueError("enforcer spec without tools")
        choice = data.get("choice", AUTO)
        if choice not in (AUTO, REQUIRED, NAMED):
            raise ValueError(f"unknown tool choice {choice!r}")
        return cls(
            tools=tools,
            first_index=int(data.get("first_index", 0)),
            choice=choice,
            parallel=bool(data.get("parallel", True)),
        )


def opted_out(value: Any) -> bool:
    """True when a request's ``kimi_tools_enforce`` xarg turns enforcement off."""
    if isinstance(value, str):
        return value.strip().lower() in ("0", "false", "off", "no")
    return value is not None and not value
