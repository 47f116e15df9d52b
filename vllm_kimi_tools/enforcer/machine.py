# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer for one request: which tokens may come next.

It follows the Kimi K2 wire format token by token::

    TEXT ──<|tool_calls_section_begin|>──▶ SECTION ──<|tool_call_begin|>──▶ HEADER
     ▲ │                                                                     │
     │ └─<think>…</think> (THINK)        functions.NAME:IDX (declared NAME,  │
     │                                   IDX = first_index + calls so far)  ▼
    AFTER ◀──<|tool_calls_section_end|>── BETWEEN ◀──<|tool_call_end|>── ARGS (JSON
     │                                     │   ▲                          per schema)
     ▼ <|im_end|>                          └───┘ <|tool_call_begin|> (parallel)

* TEXT/THINK: anything but tool markup outside its place (free text costs
  nothing: a handful of banned ids, no grammar). A bare
  ``<|tool_call_begin|>`` opens an implicit section, which may end with the
  turn (``<|im_end|>``) as well as with ``<|tool_calls_section_end|>``.
* SECTION/BETWEEN/HEADER/AFTER: an explicit short list of allowed ids.
* ARGS: the tool's xgrammar JSON grammar, with every special token cleared
  (so no marker is ever written inside a string) except ``<|tool_call_end|>``
  once the object is complete, string length bounds (:mod:`.lengths`) and
  whitespace runs of at most :data:`MAX_BLANK_RUN` characters.

``tool_choice="required"`` / named: the section must open right away (after
an optional ``<think>…</think>``); named and ``parallel_tool_calls=false``
allow one call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vllm_kimi_tools.enforcer.lengths import Bounds, JsonCursor, Path, string_bounds
from vllm_kimi_tools.enforcer.spec import AUTO, EnforcerSpec

if TYPE_CHECKING:
    import xgrammar as xgr

    from vllm_kimi_tools.enforcer.grammars import GrammarStore


# Longest whitespace run between JSON tokens: stops a model that keeps
# writing blanks where the grammar allows them; never stops indentation.
MAX_BLANK_RUN = 20


class Phase(enum.Enum):
    TEXT = "text"
    THINK = "think"
    SECTION = "section"
    HEADER = "header"
    ARGS = "args"
    BETWEEN = "between"
    AFTER = "after"
    OFF = "off"  # gave up on this request (see ``off_reason``)


@dataclass(frozen=True)
class Ban:
    """Everything allowed except these ids."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Only:
    """Only these ids allowed."""

    ids: tuple[int, ...]


class Fill:
    """The row's bitmask was filled; apply it."""


FILLED = Fill()
Directive = Ban | Only | Fill | None


class RequestEnforcer:
    """Token-level state machine for one request (pure: no vLLM)."""

    def __init__(self, spec: EnforcerSpec, grammars: GrammarStore) -> None:
        self.spec = spec
        self._store = grammars
        self._table = grammars.table
        m = self._table.markers
        self._m = m
        self._by_name = {tool.name: tool for tool in spec.tools}
        self.calls = 0
        self.tokens = 0
        self.off_reason: str | None = None
        self._forced = spec.choice != AUTO
        self._max_calls = 1 if (spec.choice != AUTO or not spec.parallel) else None
        self.phase = Phase.TEXT
        self._implicit = False  # the section began with a bare call
        self._header = b""
        self._tool: str | None = None
        self._matcher: xgr.GrammarMatcher | None = None
        self._cursor: JsonCursor | None = None
        # Length bounds by JSON path, per tool (the schema walk is not free).
        self._bounds: dict[tuple[str, Path], Bounds | None] = {}
        grammars.prefetch(tool.grammar for tool in spec.tools)

        # A bare ``<|tool_call_begin|>`` (no section wrapper, B14) opens an
        # implicit section: the parser recovers such calls, so it is allowed.
        outside = tuple(t for t in m.tool_markup() if t != m.call_begin)

        def ban(*ids: int | None) -> Ban:
            return Ban(outside + tuple(i for i in ids if i is not None))

        self._ban_text = ban(m.think_begin, m.think_end)
        self._ban_text_first = ban(m.think_end)
        self._ban_think = ban(m.think_begin)

    # -- what may come next ------------------------------------------------

    def directive(self, bitmask_row: np.ndarray | None = None) -> Directive:
        """What to do to this request's logits row before sampling.

        ``bitmask_row`` (int32 words, all ones) is filled for ARGS.
        """
        m, phase = self._m, self.phase
        if phase is Phase.TEXT:
            if self._forced:
                first = (m.think_begin,) if self.tokens == 0 and m.think_begin else ()
                return Only((m.section_begin, *first))
            return self._ban_text_first if self.tokens == 0 else self._ban_text
        if phase is Phase.THINK:
            return self._ban_think
        if phase is Phase.SECTION:
            return Only((m.call_begin,))
        if phase is Phase.BETWEEN:
            # An implicit section may also end with the turn.
            ends = (m.section_end, *m.stops) if self._implicit else (m.section_end,)
            if self._max_calls is not None and self.calls >= self._max_calls:
                return Only(ends)
            return Only((*ends, m.call_begin))
        if phase is Phase.AFTER:
            return Only(m.stops)
        if phase is Phase.HEADER:
            targets = self._header_targets()
            allowed = self._table.continuations(self._header, targets)
            if self._header in targets:
                allowed.append(m.argument_begin)
            return Only(tuple(allowed))
        if phase is Phase.ARGS:
            assert bitmask_row is not None, "ARGS needs a bitmask row"
            self._args_mask(bitmask_row)
            return FILLED
        return None

    def _header_targets(self) -> list[bytes]:
        idx = self.spec.first_index + self.calls
        return [f"functions.{name}:{idx}".encode() for name in self._by_name]

    def _args_mask(self, row: np.ndarray) -> None:
        matcher = self._ensure_matcher()
        row[:] = -1
        matcher.fill_next_token_bitmask(_as_torch(row))
        row &= self._table.special_clear_words
        cursor = self._cursor
        if cursor is not None and cursor.blank_run >= MAX_BLANK_RUN:
            row &= self._table.no_blank_start_words
        tool = self._by_name[self._tool] if self._tool else None
        if cursor is not None and tool and tool.lengths and cursor.in_value_string:
            key = (tool.name, cursor.path())
            if key not in self._bounds:
                self._bounds[key] = string_bounds(tool.lengths, key[1])
            bounds = self._bounds[key]
            if bounds is not None:
                row &= self._table.lengths.words(cursor.chars, bounds)

    def _ensure_matcher(self) -> xgr.GrammarMatcher:
        if self._matcher is None:
            assert self._tool is not None
            self._matcher = self._store.matcher(self._by_name[self._tool].grammar)
            self._cursor = JsonCursor()
        return self._matcher

    # -- what came -----------------------------------------------------------

    def accept(self, token: int) -> bool:
        """Advance on a sampled token. False (and OFF) if it was not allowed."""
        if self.phase is Phase.OFF:
            return True
        ok = self._advance(token)
        self.tokens += 1
        if not ok:
            self.stop(f"token {token} not allowed in phase {self.phase.value}")
        return ok

    def stop(self, reason: str) -> None:
        self.phase = Phase.OFF
        self.off_reason = reason
        self._matcher = None

    def _advance(self, token: int) -> bool:
        m = self._m
        if self.phase is Phase.HEADER:
            return self._advance_header(token)
        if self.phase is Phase.ARGS:
            return self._advance_args(token)
        # Every other phase allows a fixed list: the directive is the rule.
        directive = self.directive()
        if isinstance(directive, Ban) and token in directive.ids:
            return False
        if isinstance(directive, Only) and token not in directive.ids:
            return False
        if token == m.section_begin:
            self.phase = Phase.SECTION
        elif token == m.think_begin:
            self.phase = Phase.THINK
        elif token == m.think_end:
            self.phase = Phase.TEXT
        elif token == m.call_begin:
            if self.phase in (Phase.TEXT, Phase.THINK):
                self._implicit = True
            self.phase = Phase.HEADER
            self._header = b""
        elif token == m.section_end:
            self.phase = Phase.AFTER
        return True

    def _advance_header(self, token: int) -> bool:
        targets = self._header_targets()
        if token == self._m.argument_begin:
            if self._header not in targets:
                return False
            self._tool = (
                self._header.decode().removeprefix("functions.").rpartition(":")[0]
            )
            self._matcher = None
            self.phase = Phase.ARGS
            return True
        if token >= self._table.vocab_size or token in self._table.special_ids:
            return False
        data = self._table.token_bytes[token]
        grown = self._header + data
        if not data or not any(t.startswith(grown) for t in targets):
            return False
        self._header = grown
        return True

    def _advance_args(self, token: int) -> bool:
        if not self._ensure_matcher().accept_token(token):
            return False
        if token == self._m.call_end:
            self.calls += 1
            self.phase = Phase.BETWEEN
            self._matcher = None
            self._cursor = None
            self._tool = None
        else:
            assert self._cursor is not None
            self._cursor.feed(self._table.token_bytes[token])
        return True


def _as_torch(row: np.ndarray):  # -> torch.Tensor
    import torch

    return torch.from_numpy(row).unsqueeze(0)
