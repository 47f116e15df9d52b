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

The output starts where the prompt left it (:mod:`.prompt`): in TEXT (K2,
K2-Thinking: ``<think>`` may be the first token), in THINK (K2.5+ prompts
that end with ``<think>``) or in TEXT after thinking (``<think></think>``:
neither marker again).

A JSON ``response_format`` next to the tools (``spec.reply``, ``auto`` only):
the text is that JSON (REPLY: its grammar, ended by ``<|im_end|>``) or the
section opens instead of it; its first token is either, by one bitmask.

``tool_choice="required"`` / named: the section must open right away, or
right after the thinking (the model may finish its thoughts; it cannot end
the turn in them); named and ``parallel_tool_calls=false`` allow one call.

No row is ever empty: if the length and quote masks together with the
grammar would leave no token, the row falls back to the grammar's (counted
in :attr:`RequestEnforcer.degrades`); if even the grammar allows nothing,
the Enforcer stops (``off_reason`` starts with ``empty``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vllm_kimi_tools.enforcer.lengths import JsonCursor, Lengths, Path, Where
from vllm_kimi_tools.enforcer.paths import SchemaBudgetError, SchemaIndex
from vllm_kimi_tools.enforcer.prompt import OutputStart
from vllm_kimi_tools.enforcer.spec import AUTO, EnforcerSpec, ToolGrammar
from vllm_kimi_tools.parser.tool_ids import make_tool_call_id, split_canonical_id

if TYPE_CHECKING:
    import xgrammar as xgr

    from vllm_kimi_tools.enforcer.grammars import GrammarStore


_VALUE_STRING = frozenset(
    (
        Where.IN_VALUE_OBJ,
        Where.IN_VALUE_ARR,
        Where.ESCAPE_VALUE_OBJ,
        Where.ESCAPE_VALUE_ARR,
    )
)

# Longest whitespace run between JSON tokens: stops a model that keeps
# writing blanks where the grammar allows them; never stops indentation.
MAX_BLANK_RUN = 20


class Phase(enum.Enum):
    TEXT = "text"
    THINK = "think"
    SECTION = "section"
    HEADER = "header"
    ARGS = "args"
    REPLY = "reply"  # the text, as the response_format's JSON
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

    def __init__(
        self,
        spec: EnforcerSpec,
        grammars: GrammarStore,
        *,
        start: OutputStart = OutputStart.TEXT,
    ) -> None:
        self.spec = spec
        self.start = start
        self._store = grammars
        self._table = grammars.table
        m = self._table.markers
        self._m = m
        self._by_name = {tool.name: tool for tool in spec.tools}
        self.calls = 0
        self.tokens = 0
        self.off_reason: str | None = None
        # Degrades, by kind: ``dead_end`` (the length/quote masks left
        # nothing and the grammar's row was used instead) and ``budget`` (a
        # schema walk ran past its budget; that tool's lengths were dropped).
        # Either way a length bound may be broken.
        self.degrades: dict[str, int] = {}
        self._forced = spec.choice != AUTO
        # With forced calls there is no text to shape.
        self._reply = None if self._forced else spec.reply
        self._max_calls = 1 if (spec.choice != AUTO or not spec.parallel) else None
        self._phase = Phase.THINK if start is OutputStart.THINKING else Phase.TEXT
        self._steady: Ban | None = None  # steady_ban, kept with the phase
        # ``<think>`` may open the output only where the prompt did not.
        self._may_think = start is OutputStart.TEXT
        self._implicit = False  # the section began with a bare call
        self._header = b""
        self._targets: tuple[int, tuple[bytes, ...]] | None = None  # (idx, ids)
        # The targets the header written so far may still become (None: all).
        self._live: tuple[bytes, ...] | None = None
        self._hurried: bytes | None = None  # the header whose grammar was hurried
        self._special = self._table.special_ids
        self._tool: str | None = None
        self._matcher: xgr.GrammarMatcher | None = None
        self._cursor: JsonCursor | None = None
        # The masks beyond the grammar that narrowed the last argument row
        # (a shared read-only array): ``accept`` refuses what they refused,
        # as it does the grammar's.
        self._narrowed: np.ndarray | None = None
        self._scratch: np.ndarray | None = None  # one bitmask row, reused
        # Length bounds by JSON path, per tool (memoised, bounded walks).
        self._index: dict[str, SchemaIndex] = {}
        self._unbounded: set[str] = set()  # tools whose lengths were dropped
        grammars.prefetch(
            [*(tool.grammar for tool in spec.tools)]
            + ([self._reply.grammar] if self._reply is not None else [])
        )

        # A bare ``<|tool_call_begin|>`` (no section wrapper) opens an
        # implicit section: the parser recovers such calls, so it is allowed.
        outside = tuple(t for t in m.tool_markup() if t != m.call_begin)
        if not self._by_name:
            # No tool can be called in this request (none fits its budget):
            # no section or call may open.
            outside = (*m.tool_markup(), m.section_begin)

        def ban(*ids: int | None) -> Ban:
            return Ban(outside + tuple(i for i in ids if i is not None))

        self._ban_text = ban(m.think_begin, m.think_end)
        self._ban_text_first = ban(m.think_end)
        self._ban_think = ban(m.think_begin)
        # Forced calls: thinking may not end the turn.
        self._ban_think_forced = ban(m.think_begin, *m.stops)
        self._steady = self._steady_ban()

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        self._phase = phase
        self._steady = self._steady_ban()

    # -- what may come next ------------------------------------------------

    def directive(self, bitmask_row: np.ndarray | None = None) -> Directive:
        """What to do to this request's logits row before sampling.

        ``bitmask_row`` (int32 words, all ones) is filled for ARGS.
        """
        m, phase = self._m, self.phase
        if self.needs_fill:
            assert bitmask_row is not None, f"{phase.value} needs a bitmask row"
            self.fill_grammar(bitmask_row)
            return self.directive_filled(bitmask_row)
        ban = self.steady_ban
        if ban is not None:
            return ban
        if phase is Phase.TEXT:  # forced: the section opens (or thinking)
            first = self.tokens == 0 and self._may_think
            think = (m.think_begin,) if first and m.think_begin else ()
            return Only((m.section_begin, *think))
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
            live = self._live if self._live is not None else self._header_targets()
            allowed = self._table.continuations(self._header, live)
            if self._header in live:
                allowed = (*allowed, m.argument_begin)
            if not allowed:
                self.stop("empty: no token continues the call header")
                return None
            return Only(allowed)
        return None

    @property
    def steady_ban(self) -> Ban | None:
        """The directive where it is a ban of a few markers that no ordinary
        (non-special) token changes: free text and thinking. None elsewhere.

        A batch reads it instead of :meth:`directive`, and :meth:`accept`
        takes an ordinary token here without any other work. Kept with the
        phase (and the first token), not worked out on each read.
        """
        return self._steady

    def _steady_ban(self) -> Ban | None:
        phase = self._phase
        if phase is Phase.THINK:
            return self._ban_think_forced if self._forced else self._ban_think
        if phase is Phase.TEXT and not self._forced and self._reply is None:
            first = self.tokens == 0 and self._may_think
            return self._ban_text_first if first else self._ban_text
        return None

    @property
    def needs_fill(self) -> bool:
        """Whether the next directive starts from a grammar's bitmask (ARGS,
        REPLY, and TEXT where the JSON reply is about to open)."""
        return self.phase in (Phase.ARGS, Phase.REPLY) or self._reply_opens

    @property
    def _reply_opens(self) -> bool:
        # With a reply, TEXT never holds free text: it is the reply's start.
        return self._reply is not None and self.phase is Phase.TEXT

    def fill_matcher(self) -> xgr.GrammarMatcher:
        """Where :attr:`needs_fill`: the matcher whose bitmask the next
        directive starts from.

        A caller batching many requests fills their rows at once (xgrammar's
        ``BatchGrammarMatcher``), then calls :meth:`directive_filled`.
        """
        assert self.needs_fill
        return self._ensure_matcher()

    def fill_grammar(self, bitmask_row: np.ndarray) -> None:
        """In ARGS: write the argument grammar's own bitmask into
        ``bitmask_row`` (one request; :meth:`fill_matcher` for a batch)."""
        bitmask_row[:] = -1
        self.fill_matcher().fill_next_token_bitmask(_as_torch(bitmask_row))

    def directive_filled(self, bitmask_row: np.ndarray) -> Directive:
        """Where :attr:`needs_fill`, ``bitmask_row`` holding
        :meth:`fill_matcher`'s bitmask: narrow it with the masks beyond the
        grammar; the directive."""
        ok = self._args_mask(bitmask_row)
        if self._reply_opens:
            m = self._m
            others = [m.section_begin, m.call_begin] if self._by_name else []
            if self.tokens == 0 and self._may_think and m.think_begin is not None:
                others.append(m.think_begin)
            words = bitmask_row.view(np.uint32)
            for token in others:
                words[token >> 5] |= np.uint32(1 << (token & 31))
            ok = ok or bool(others)
        if not ok:
            bitmask_row[:] = -1
            self.stop("empty: the argument grammar allows no token")
            return None
        return FILLED

    @property
    def current_tool(self) -> str | None:
        """The tool whose arguments are being written (None elsewhere)."""
        return self._tool

    def _header_targets(self) -> tuple[bytes, ...]:
        idx = self.spec.first_index + self.calls
        if self._targets is None or self._targets[0] != idx:
            ids = tuple(make_tool_call_id(name, idx).encode() for name in self._by_name)
            self._targets = (idx, ids)
        return self._targets[1]

    def _json_grammar(self) -> ToolGrammar:
        """The grammar being written: the call's, or else the reply's."""
        if self._tool is not None:
            return self._by_name[self._tool]
        assert self._reply is not None
        return self._reply

    def _args_mask(self, row: np.ndarray) -> bool:
        """Narrow the grammar's ``row``; False when no token is left."""
        clear = (
            self._table.reply_clear_words
            if self._tool is None
            else self._table.special_clear_words
        )
        self._narrowed = None
        beyond = self._beyond_grammar(clear)
        if beyond is None:
            row &= clear
            return _any(row)
        if self._scratch is None:
            self._scratch = np.empty_like(row)
        narrowed = np.bitwise_and(row, beyond, out=self._scratch)
        if _any(narrowed):
            row[:] = narrowed
            # What ``accept`` checks beyond the grammar (and the markers).
            self._narrowed = beyond
            return True
        # Safety net (a schema the masks cannot serve, e.g. a pattern that
        # needs more characters than maxLength leaves): the grammar's row.
        self._degrade("dead_end")
        row &= clear
        return _any(row)

    def _beyond_grammar(self, clear: np.ndarray) -> np.ndarray | None:
        """The masks beyond the grammar at the cursor, ANDed with ``clear``
        into one (memoised by the table: rows in the same state share it);
        None where only ``clear`` applies."""
        cursor = self._cursor
        if cursor is None:
            return None
        tool = self._json_grammar()
        bounded = tool is not None and self._bounded(tool)
        blanks = cursor.blank_run >= MAX_BLANK_RUN
        if not (bounded or blanks):
            return None
        table = self._table
        parts: list[np.ndarray] = [clear]
        if blanks:
            parts.append(table.no_blank_start_words)
        if bounded:
            assert tool is not None and tool.lengths is not None
            where = cursor.where()
            parts.append(self._quote_words(tool, cursor, where))
            lengths = self._lengths_here(tool, cursor, where)
            if lengths is not None:
                parts.append(
                    table.lengths.words(cursor.chars, lengths, cursor.escape_left)
                )
        return table.combined_words(parts)

    @property
    def fallbacks(self) -> int:
        """Degraded steps so far (every kind)."""
        return sum(self.degrades.values())

    def _degrade(self, kind: str) -> None:
        self.degrades[kind] = self.degrades.get(kind, 0) + 1

    def _bounded(self, tool: ToolGrammar) -> bool:
        return bool(tool.lengths) and tool.name not in self._unbounded

    def refused_by(self, token: int) -> list[str]:
        """Which argument masks refuse ``token`` now (diagnostics, not the
        decode path): ``grammar``, ``special``, ``blanks``, ``quotes``,
        ``lengths``. Empty outside ARGS or when every mask allows it."""
        if self.phase is not Phase.ARGS or not 0 <= token < self._table.vocab_size:
            return []
        table, cursor = self._table, self._cursor
        word, bit = token >> 5, token & 31

        def refuses(words: np.ndarray) -> bool:
            return not (int(words[word]) >> bit) & 1

        row = np.empty((table.vocab_size + 31) // 32, dtype=np.int32)
        self.fill_grammar(row)
        out = ["grammar"] if refuses(row) else []
        if refuses(table.special_clear_words):
            out.append("special")
        assert cursor is not None
        if cursor.blank_run >= MAX_BLANK_RUN and refuses(table.no_blank_start_words):
            out.append("blanks")
        tool = self._by_name[self._tool] if self._tool else None
        if tool is not None and self._bounded(tool):
            where = cursor.where()
            if refuses(self._quote_words(tool, cursor, where)):
                out.append("quotes")
            lengths = self._lengths_here(tool, cursor, where)
            if lengths is not None and refuses(
                table.lengths.words(cursor.chars, lengths, cursor.escape_left)
            ):
                out.append("lengths")
        return out

    def _quote_words(
        self, tool: ToolGrammar, cursor: JsonCursor, where: Where
    ) -> np.ndarray:
        quotes = self._table.quotes
        if where in (Where.VALUE_OBJ, Where.VALUE_ARR):
            # The string about to open is at the cursor's path: a token may
            # open it and write what its bound leaves room for.
            lengths = self._lengths_at(tool, cursor.path())
            return quotes.words_opening(where, lengths.high if lengths else None)
        return quotes.words(where)

    def _lengths_here(
        self, tool: ToolGrammar, cursor: JsonCursor, where: Where
    ) -> Lengths | None:
        """The lengths the value string being written may have (None: any)."""
        if where not in _VALUE_STRING:
            return None
        return self._lengths_at(tool, cursor.path())

    def _lengths_at(self, tool: ToolGrammar, path: Path) -> Lengths | None:
        if not self._bounded(tool):
            return None
        index = self._index.get(tool.name)
        if index is None:
            index = self._index[tool.name] = SchemaIndex(tool.lengths)
        try:
            return index.lengths(path)
        except (SchemaBudgetError, RecursionError):
            # Admission keeps bounded schemas well within the budget; if one
            # is not, its lengths are dropped rather than stall the batch.
            self._unbounded.add(tool.name)
            self._degrade("budget")
            return None

    @property
    def cursor(self) -> JsonCursor | None:
        """Where the arguments being written are (None outside ARGS)."""
        return self._cursor

    def _ensure_matcher(self) -> xgr.GrammarMatcher:
        if self._matcher is None:
            stops = self._m.stops if self._tool is None else None
            self._matcher = self._store.matcher(self._json_grammar().grammar, stops)
            self._cursor = JsonCursor()
        return self._matcher

    # -- what came -----------------------------------------------------------

    def accept(self, token: int) -> bool:
        """Advance on a sampled token. False (and OFF) if it was not allowed."""
        if self.phase is Phase.OFF:
            return True
        if token not in self._special and self._steady is not None:
            self._count()  # ordinary text: nothing else changes
            return True
        ok = self._advance(token)
        self._count()
        if not ok:
            self.stop(f"token {token} not allowed in phase {self.phase.value}")
        return ok

    def accept_text(self, token: int) -> bool:
        """:meth:`accept`'s fast path, for a batch: an ordinary token in free
        text or thinking is counted, and nothing else changes. False where
        that is not the case (nothing done: call :meth:`accept`)."""
        if token < 0 or self._steady is None or token in self._special:
            return False
        self._count()
        return True

    def _count(self) -> None:
        self.tokens += 1
        if self.tokens == 1:  # the ban of the first token gives way
            self._steady = self._steady_ban()

    def stop(self, reason: str) -> None:
        self.phase = Phase.OFF
        self.off_reason = reason
        self._matcher = None

    def _advance(self, token: int) -> bool:
        m = self._m
        if self.phase is Phase.HEADER:
            return self._advance_header(token)
        if self.phase in (Phase.ARGS, Phase.REPLY):
            return self._advance_args(token)
        if self._reply_opens:
            return self._open_reply(token)
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
            self._header, self._live = b"", None
        elif token == m.section_end:
            self.phase = Phase.AFTER
        return True

    def _advance_header(self, token: int) -> bool:
        targets = self._header_targets()
        if token == self._m.argument_begin:
            if self._header not in targets:
                return False
            parts = split_canonical_id(self._header.decode())
            assert parts is not None  # one of the targets
            self._tool = parts[0]
            self._matcher = None
            self.phase = Phase.ARGS
            return True
        if token >= self._table.vocab_size or token in self._table.special_ids:
            return False
        data = self._table.token_bytes[token]
        grown = self._header + data
        live = self._live if self._live is not None else targets
        named = tuple(t for t in live if t.startswith(grown))
        if not data or not named:
            return False
        if len(named) == 1 and named[0] != self._hurried:
            # The header now names one tool: its grammar jumps the queue.
            self._hurried = named[0]
            parts = split_canonical_id(named[0].decode())
            if parts is not None:
                self._store.hurry(self._by_name[parts[0]].grammar)
        self._header, self._live = grown, named
        return True

    def _open_reply(self, token: int) -> bool:
        """TEXT with a reply: the section (or thinking) opens, or the JSON."""
        m = self._m
        opens_section = token in (m.section_begin, m.call_begin) and self._by_name
        opens_think = token == m.think_begin and self.tokens == 0 and self._may_think
        if opens_section or opens_think:
            self._matcher = self._cursor = None
            self._narrowed = None
            if token == m.section_begin:
                self.phase = Phase.SECTION
            elif token == m.call_begin:
                self._implicit = True
                self._header, self._live = b"", None
                self.phase = Phase.HEADER
            else:
                self.phase = Phase.THINK
            return True
        self.phase = Phase.REPLY
        return self._advance_args(token)

    def _advance_args(self, token: int) -> bool:
        ends = (self._m.call_end,) if self.phase is Phase.ARGS else self._m.stops
        if token not in ends and token in self._table.special_ids:
            return False  # xgrammar reads markers as text; they never are
        narrowed, self._narrowed = self._narrowed, None
        if narrowed is not None and not _has_bit(narrowed, token):
            return False
        if not self._ensure_matcher().accept_token(token):
            return False
        if self.phase is Phase.REPLY and token in ends:
            self.phase = Phase.AFTER
            self._matcher = self._cursor = None
        elif token == self._m.call_end:
            self.calls += 1
            self.phase = Phase.BETWEEN
            self._matcher = None
            self._cursor = None
            self._tool = None
        else:
            assert self._cursor is not None
            self._cursor.feed(self._table.token_bytes[token])
        return True


def _any(words: np.ndarray) -> bool:
    # (Twice as fast as ``words.any()`` on a bitmask row.)
    return np.count_nonzero(words) > 0


def _has_bit(words: np.ndarray, token: int) -> bool:
    word = token >> 5
    return 0 <= word < len(words) and bool((int(words[word]) >> (token & 31)) & 1)


def _as_torch(row: np.ndarray):  # -> torch.Tensor
    import torch

    return torch.from_numpy(row).unsqueeze(0)
