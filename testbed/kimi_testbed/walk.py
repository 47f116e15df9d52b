# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Replay known-good tool calls through the Enforcer, token by token.

A call whose arguments pass ``jsonschema`` is written as a model writes it
(:func:`call_text`), tokenized by the real tokenizer, and fed to a
:class:`~.machine.RequestEnforcer`: each token must be allowed by the
directive (ban list, keep list or bitmask) before it is accepted. A refused
token is a *block*; :func:`explain` names the mask that refused it and the
documented rule (:data:`RULES`) that makes the Enforcer stricter than the
schema there. A block no rule explains is ``unexplained``: a bug to fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kimi_testbed import wire
from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.admission import (
    build_spec,
)
from vllm_kimi_tools.enforcer.lengths import JsonCursor, Path, Where
from vllm_kimi_tools.enforcer.machine import (
    MAX_BLANK_RUN,
    Ban,
    Fill,
    Only,
    Phase,
    RequestEnforcer,
)
from vllm_kimi_tools.enforcer.paths import schema_nodes
from vllm_kimi_tools.enforcer.schemas import prepare_schema
from vllm_kimi_tools.tools import DeclaredTool

if TYPE_CHECKING:
    from vllm_kimi_tools.enforcer.grammars import GrammarStore

# Why a schema-valid call may be refused (docs/enforcer.md, "Schema semantics").
RULES: dict[str, str] = {
    "declared-order": "keys are written in the order the schema declares them",
    "no-extra-keys": "additionalProperties absent: no undeclared keys",
    "integer-no-fraction": "an integer is written without a fraction (1.0 is not)",
    "format": "a string's format is checked by its grammar",
    "whitespace-run": f"at most {MAX_BLANK_RUN} blanks in a row between JSON tokens",
    "marker-in-arguments": "special tokens are never written inside arguments",
    "quote-in-bounded-tool": (
        "in a tool with string length bounds, a token opens a value string "
        "only with its last byte"
    ),
    "unexplained": "no documented rule: a bug",
}


@dataclass(frozen=True)
class Block:
    rule: str
    index: int  # of the refused token in the call's token ids
    token: int
    piece: bytes  # the refused token's bytes
    phase: str
    masks: tuple[str, ...]  # the argument masks that refused it
    path: Path
    where: str


@dataclass(frozen=True)
class Walk:
    checked: int  # tokens checked and accepted before any block
    total: int
    calls_done: int  # calls the Enforcer saw end with <|tool_call_end|>
    block: Block | None


def call_text(calls: Sequence[tuple[str, Any]], first_index: int = 0) -> str:
    """A tool-call section as a Kimi model writes it, then the end of turn."""
    return (
        wire.section(
            *(
                wire.call(name, json.dumps(args, ensure_ascii=False), first_index + i)
                for i, (name, args) in enumerate(calls)
            )
        )
        + kt.IM_END
    )


def allows(enforcer: RequestEnforcer, row: np.ndarray, token: int) -> bool:
    """Whether the Enforcer's next directive allows ``token`` (``row``: int32
    words, all ones; filled for arguments, then restored)."""
    directive = enforcer.directive(row)
    if isinstance(directive, Ban):
        return token not in directive.ids
    if isinstance(directive, Only):
        return token in directive.ids
    if isinstance(directive, Fill):
        ok = bool((int(row[token >> 5]) >> (token & 31)) & 1)
        row[:] = -1
        return ok
    return True  # stood down: nothing enforced


def walk(
    enforcer: RequestEnforcer,
    ids: Sequence[int],
    calls: Sequence[tuple[str, Any]],
    schemas: dict[str, Any],
) -> Walk:
    """Feed ``ids`` through ``enforcer``; stop at (and explain) a block.

    ``calls`` are the ``(name, arguments)`` the ids spell; ``schemas`` the
    tools' prepared schemas by name (for :func:`explain`).
    """
    table = enforcer._table
    row = np.full((table.vocab_size + 31) // 32, -1, dtype=np.int32)
    for i, token in enumerate(ids):
        if not allows(enforcer, row, token):
            block = explain(enforcer, token, calls, schemas, i)
            return Walk(i, len(ids), enforcer.calls, block)
        # Allowed by the directive, yet refused on acceptance, or the
        # Enforcer gave up (an empty row): a bug either way.
        if not enforcer.accept(token) or enforcer.phase is Phase.OFF:
            piece = table.token_bytes[token] if 0 <= token < table.vocab_size else b""
            block = Block(
                "unexplained", i, token, piece, "off", (), (), enforcer.off_reason or ""
            )
            return Walk(i, len(ids), enforcer.calls, block)
    return Walk(len(ids), len(ids), enforcer.calls, None)


def walk_calls(
    store: GrammarStore,
    tokenizer: Any,
    tools: dict[str, Any],
    calls: Sequence[tuple[str, Any]],
    **enforcer_kw: Any,
) -> Walk:
    """Declare ``tools`` (``{name: parameters}``), write ``calls`` as a model
    does, tokenize them with ``tokenizer`` and :func:`walk` the ids.

    Raises ``ValueError`` if the tokenizer does not round-trip the text, or
    the schema is refused at admission.
    """
    spec, _ = build_spec(
        [DeclaredTool(name, params) for name, params in tools.items()], first_index=0
    )
    schemas = {name: prepare_schema(params).schema for name, params in tools.items()}
    text = call_text(calls)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if tokenizer.decode(ids) != text:
        raise ValueError("the tokenizer does not round-trip the call text")
    return walk(RequestEnforcer(spec, store, **enforcer_kw), ids, calls, schemas)


def explain(
    enforcer: RequestEnforcer,
    token: int,
    calls: Sequence[tuple[str, Any]],
    schemas: dict[str, Any],
    index: int = 0,
) -> Block:
    """The documented rule behind the Enforcer refusing ``token`` now."""
    table = enforcer._table
    piece = table.token_bytes[token] if 0 <= token < table.vocab_size else b""
    masks = tuple(enforcer.refused_by(token))
    cursor = enforcer.cursor
    path: Path = cursor.path() if cursor is not None else ()
    where = cursor.where() if cursor is not None else None
    rule = "unexplained"
    if (
        enforcer.phase is Phase.ARGS
        and cursor is not None
        and enforcer.calls < len(calls)
    ):
        name, args = calls[enforcer.calls]
        schema = schemas.get(name, True)
        if "grammar" in masks:
            rule = _grammar_rule(schema, args, cursor, piece)
        elif "special" in masks:
            rule = "marker-in-arguments"
        elif "blanks" in masks:
            rule = "whitespace-run"
        elif "quotes" in masks and "lengths" not in masks:
            rule = "quote-in-bounded-tool"
    return Block(
        rule,
        index,
        token,
        piece,
        enforcer.phase.value,
        masks,
        path,
        where.name if where is not None else "",
    )


def _grammar_rule(schema: Any, args: Any, cursor: JsonCursor, piece: bytes) -> str:
    """Which stricter-than-the-schema rule made the grammar refuse a token."""
    where, path = cursor.where(), cursor.path()
    if where in (Where.KEY, Where.IN_KEY):
        # The key as far as this token writes it, and the object's schemas.
        if where is Where.KEY:
            quote = piece.find(b'"')
            piece = piece[quote + 1 :] if quote >= 0 else b""
        end = piece.find(b'"')
        key = cursor.key_so_far + (piece if end < 0 else piece[:end])
        nodes = [n for n in schema_nodes(schema, path[:-1]) if isinstance(n, dict)]
        declared = [k for n in nodes for k in n.get("properties") or {}]
        spelled = [json.dumps(k, ensure_ascii=False)[1:-1].encode() for k in declared]
        matches = [k for k, s in zip(declared, spelled) if s.startswith(key)]
        if end >= 0:
            matches = [k for k, s in zip(declared, spelled) if s == key]
        if not matches and all(n.get("additionalProperties") is None for n in nodes):
            return "no-extra-keys"
        obj = _value_at(args, path[:-1])
        if matches and isinstance(obj, dict):
            written = [k for k in obj if k in declared]
            if written != sorted(written, key=declared.index):
                return "declared-order"
        return "unexplained"
    value = _value_at(args, path)
    nodes = [n for n in schema_nodes(schema, path) if isinstance(n, dict)]
    if (
        isinstance(value, float)
        and value.is_integer()
        and any("integer" in _types(n) and "number" not in _types(n) for n in nodes)
    ):
        return "integer-no-fraction"
    if (
        where in (Where.IN_VALUE_OBJ, Where.IN_VALUE_ARR)
        and isinstance(value, str)
        and any("format" in n for n in nodes)
    ):
        return "format"
    return "unexplained"


def _types(node: dict[str, Any]) -> list[str]:
    declared = node.get("type")
    return declared if isinstance(declared, list) else [declared]


_MISSING = object()


def _value_at(value: Any, path: Path) -> Any:
    for step in path:
        if step is None:
            return _MISSING
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


__all__ = [
    "RULES",
    "Block",
    "Walk",
    "allows",
    "call_text",
    "explain",
    "walk",
    "walk_calls",
]
