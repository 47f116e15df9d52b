# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Declared tools + ``tool_choice`` → :class:`.spec.EnforcerSpec` (pure).

Runs in the API server at admission, so an unusable tool schema is refused
with a clear message (HTTP 400) before anything reaches the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vllm_kimi_tools.enforcer.schemas import UnusableSchemaError, prepare_schema
from vllm_kimi_tools.enforcer.spec import (
    AUTO,
    NAMED,
    REQUIRED,
    EnforcerSpec,
    ToolGrammar,
)


@dataclass(frozen=True)
class ToolDecl:
    name: str
    parameters: Any = None
    strict: bool | None = None  # OpenAI's per-tool flag; False: envelope only


def build_spec(
    tools: Sequence[ToolDecl],
    *,
    first_index: int,
    choice: str = AUTO,
    named: str | None = None,
    parallel: bool = True,
) -> tuple[EnforcerSpec, list[str]]:
    """The Enforcer spec for a request, and notes on degraded schemas.

    Raises ``ValueError`` (HTTP 400) for unusable tools.
    """
    notes: list[str] = []
    grammars: list[ToolGrammar] = []
    seen: set[str] = set()
    for tool in tools:
        if not tool.name or not isinstance(tool.name, str):
            raise ValueError("every tool needs a non-empty function name")
        if tool.name in seen:
            raise ValueError(f"tool {tool.name!r} is declared twice")
        seen.add(tool.name)
        if named is not None and tool.name != named:
            continue
        try:
            prepared = prepare_schema(tool.parameters, strict=tool.strict is not False)
        except UnusableSchemaError as e:
            raise ValueError(f"tool {tool.name!r}: {e}") from e
        notes.extend(f"tool {tool.name!r} {note}" for note in prepared.degraded)
        grammars.append(
            ToolGrammar(
                tool.name,
                prepared.grammar_json,
                prepared.schema if prepared.has_length_bounds else None,
            )
        )
    if named is not None:
        if not grammars:
            raise ValueError(f"tool_choice names {named!r}, which is not declared")
        choice = NAMED
    elif choice not in (AUTO, REQUIRED):
        raise ValueError(f"unsupported tool_choice {choice!r}")
    spec = EnforcerSpec(
        tools=tuple(grammars), first_index=first_index, choice=choice, parallel=parallel
    )
    return spec, notes
