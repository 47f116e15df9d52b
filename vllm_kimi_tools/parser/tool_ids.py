# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Kimi tool-call ids: resolve what the model wrote, mint what it should write.

Canonical form, as Moonshot's API renders it::

    functions.get_weather: 3  # NAME = get_weather, IDX = 3

IDX counts every tool call in the conversation, history included. Variants
seen in the wild, all resolved against the tools declared in the request:

    get_weather:3   functions_get_weather_3   functionsget_weather3
    functions.mcp:tool:0   (name ``mcp:tool``)   functions.a.b-c:1

Opaque ids (``call_9f2c…``, uuids, bare counters) carry no name; the caller
falls back to the only declared tool or to a schema match on the arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import regex as re

from vllm_kimi_tools.tokens import TOOL_CALL_ID_PREFIX

# ``functions`` followed by ``.``, ``_`` or nothing.
_PREFIX_RE = re.compile(r"^functions[._]?")
# Best-effort split of an undeclared id into name and index, for logging.
_GUESS_RE = re.compile(r"^(?:functions[._]?)?(?P<name>.+?)(?:[:_]?\d+)?$", re.DOTALL)
_OPAQUE_RE = re.compile(
    r"^(?:"
    r"(?:call|chatcmpl-tool|toolu|fc)[_-][A-Za-z0-9_-]+"
    r"|call[0-9a-fA-F]+"
    r"|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
    r"|\d+"
    r")$"
)


@dataclass(frozen=True, slots=True)
class ResolvedId:
    """Outcome of resolving a raw id against the declared tool names."""

    # Declared tool name, or None when the id names no declared tool.
    name: str | None
    # True when the id carries no name at all (``call_…``, uuid, counter).
    opaque: bool
    # Best guess at the name the model meant, for logs and metrics.
    guessed_name: str


def make_tool_call_id(name: str, index: int) -> str:
    """Canonical Kimi id ``functions.NAME:IDX``."""
    return f"{TOOL_CALL_ID_PREFIX}{name}:{index}"


def _candidates(raw_id: str) -> list[str]:
    stripped = _PREFIX_RE.sub("", raw_id, count=1)
    return [raw_id, stripped] if stripped != raw_id else [raw_id]


def _matches(name: str, candidate: str) -> bool:
    if candidate == name:
        return True
    if not candidate.startswith(name):
        return False
    rest = candidate[len(name) :]
    if rest[:1] in (":", "_", "."):
        rest = rest[1:]
    return rest.isdigit() and rest.isascii()


def resolve_tool_call_id(raw_id: str, declared: Iterable[str]) -> ResolvedId:
    """Resolve ``raw_id`` to a declared tool name.

    Among declared names that the id spells (with or without the
    ``functions`` prefix and the ``:IDX``/``_IDX``/``IDX`` suffix), the longest
    wins, so ``functions.get:0`` never resolves to ``get_weather`` and
    ``search_web_0`` prefers ``search_web`` over ``search``.
    """
    raw_id = raw_id.strip()
    best: str | None = None
    for candidate in _candidates(raw_id):
        for name in declared:
            if _matches(name, candidate) and (best is None or len(name) > len(best)):
                best = name
    opaque = best is None and bool(_OPAQUE_RE.match(raw_id))
    guess = best
    if guess is None:
        m = _GUESS_RE.match(raw_id)
        guess = m.group("name") if m else raw_id
    return ResolvedId(name=best, opaque=opaque, guessed_name=guess)


def split_canonical_id(raw_id: str) -> tuple[str, int] | None:
    """``(NAME, IDX)`` of an id in canonical ``functions.NAME:IDX`` form."""
    if not raw_id.startswith(TOOL_CALL_ID_PREFIX):
        return None
    name, sep, idx = raw_id[len(TOOL_CALL_ID_PREFIX) :].rpartition(":")
    if not sep or not idx.isdigit() or not idx.isascii():
        return None
    return name, int(idx)


def canonical_index(raw_id: str) -> int | None:
    """The IDX of an id already in canonical ``functions.NAME:IDX`` form."""
    parts = split_canonical_id(raw_id)
    return None if parts is None else parts[1]


# Text that would end or restructure the call header if a name contained it.
_UNSAFE_NAME_RE = re.compile(r"<\||\|>|</?think>|[\x00-\x20\x7f]")


def unsafe_tool_name(name: object) -> str | None:
    """Why ``name`` cannot be written as ``functions.NAME:IDX``, or None.

    A name holding Kimi marker text (``<|tool_call_end|>``), a think tag,
    whitespace or a control character would split the call header: the
    model's call could not be parsed back, so such tools are refused.
    """
    if not isinstance(name, str) or not name:
        return "every tool needs a non-empty function name"
    if (m := _UNSAFE_NAME_RE.search(name)) is not None:
        return (
            f"tool name {name[:80]!r} contains {m.group()!r}, which cannot be "
            "written in Kimi's tool-call header"
        )
    return None
