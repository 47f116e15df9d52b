# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Tool-call arguments: the JSON object text between the argument marker and
the call end::

    <|tool_call_argument_begin|>{"city": "Tokyo"}<|tool_call_end|>

Accepted: a JSON object (returned byte for byte, stripped), an empty body
(``{}``), or a JSON string whose content is a JSON object (unwrapped, a known
Kimi habit: ``"{\\"city\\": \\"Tokyo\\"}"``). Anything else is not a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Arguments:
    """Arguments ready for the client: compact text plus the parsed object."""

    text: str
    value: dict[str, Any]


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity, which are not JSON.
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def parse_arguments(raw: str) -> Arguments | None:
    """Return the normalised arguments, or None when ``raw`` is not an object."""
    text = raw.strip()
    if not text:
        return Arguments("{}", {})
    try:
        value = _loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        return Arguments(text, value)
    if isinstance(value, str):
        try:
            inner = _loads(value)
        except ValueError:
            return None
        if isinstance(inner, dict):
            return Arguments(json.dumps(inner, ensure_ascii=False), inner)
    return None
