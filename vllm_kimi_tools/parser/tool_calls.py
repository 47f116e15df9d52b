# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Incremental parser for Kimi K2 tool calls (pure Python, no vLLM).

Wire format::

    Sure.<|tool_calls_section_begin|>
    <|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>
    {"city": "Tokyo"}<|tool_call_end|>
    <|tool_calls_section_end|>

One state machine serves streaming and non-streaming: ``parse_tool_calls`` is
``feed(text)`` + ``finish()``, so every way of splitting the text into deltas
yields the same content and calls. Text is streamed as it arrives, holding
back only a suffix that could still grow into a marker. By default a call is
emitted whole once it is complete (its id resolved to a declared tool, its
arguments a JSON object), so a client never sees a call that later turns out
to be truncated, undeclared or malformed. Such calls are reported in
``dropped``; their markup never reaches content.

Tools named in ``stream_arguments`` (those the Enforcer constrains exactly,
so a started call can only become valid) stream as they are written, in
``ParseDelta.call_deltas``: the canonical id and name once the argument
marker closes the header, then the argument text as it grows (leading and
trailing blanks held back, so the pieces join to exactly the returned
``arguments``). Arguments that do not open with ``{`` (a string-encoded
object) arrive in one piece, unwrapped, when the call closes. A streamed call
that is then dropped (cut by ``max_tokens``, or the Enforcer stood down) keeps
its index and is reported in ``dropped`` with ``streamed=True``.

Recovered deviations: ids without ``functions.`` or with ``_`` separators,
opaque ids (``call_…``), a missing section wrapper, a missing call or section
end, text after the section, the singular ``<|tool_call_section_begin|>``,
string-encoded arguments, and marker text inside JSON strings.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex as re

from vllm_kimi_tools.parser.arguments import Arguments, parse_arguments
from vllm_kimi_tools.parser.tool_ids import make_tool_call_id, resolve_tool_call_id
from vllm_kimi_tools.tokens import (
    CHAT_CONTROL_TOKENS,
    RESERVED_TOKEN_FORMAT,
    SPECIAL_TOKEN_IDS,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_BEGIN,
    TOOL_CALL_END,
    TOOL_CALL_SECTION_BEGIN_ALT,
    TOOL_CALL_SECTION_END_ALT,
    TOOL_CALLS_SECTION_BEGIN,
    TOOL_CALLS_SECTION_END,
)
from vllm_kimi_tools.tools import DeclaredTool

_SECTION_BEGINS = frozenset({TOOL_CALLS_SECTION_BEGIN, TOOL_CALL_SECTION_BEGIN_ALT})
_SECTION_ENDS = frozenset({TOOL_CALLS_SECTION_END, TOOL_CALL_SECTION_END_ALT})
_TOOL_MARKERS = (
    *_SECTION_BEGINS,
    *_SECTION_ENDS,
    TOOL_CALL_BEGIN,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_END,
)
# Every other ``<|…|>`` special of Kimi's tokenizer (chat and media tokens,
# and the ``<|reserved_token_N|>`` ids) is markup that never reaches content.
_CONTROL = frozenset(
    t for t in (*CHAT_CONTROL_TOKENS, *SPECIAL_TOKEN_IDS) if t.startswith("<|")
) - frozenset(_TOOL_MARKERS)
_RESERVED_RE = re.escape(RESERVED_TOKEN_FORMAT).replace(r"\{\}", r"\d+")
_MARKERS = (*_TOOL_MARKERS, *_CONTROL)
# Every marker starts with "<" and contains no other "<", so a suffix that may
# still become a marker always starts at the last "<" of the pending text.
assert all(m.startswith("<") and m.count("<") == 1 for m in _MARKERS)
_MARKER_RE = re.compile(
    "|".join([*(re.escape(m) for m in sorted(_MARKERS, key=len)[::-1]), _RESERVED_RE])
)
_JSON_STRING_RE = re.compile(r'["\\]')


class DropReason(enum.StrEnum):
    """Why a call the model wrote is not returned as a tool call."""

    UNDECLARED = "undeclared_tool"
    UNRESOLVED = "unresolved_id"
    INVALID_ARGUMENTS = "invalid_arguments"
    TRUNCATED = "truncated"
    # An enforced request's call that still fails its schema (a tool the
    # Enforcer could only enforce loosely, or one it stood down for).
    SCHEMA_INVALID = "schema_invalid"


@dataclass(frozen=True, slots=True)
class ParsedToolCall:
    """A complete call to a declared tool, with its canonical id."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class DroppedToolCall:
    """A call that was written but is not returned, and why."""

    raw_id: str
    name: str
    reason: DropReason
    arguments: str
    # Its header (and maybe some arguments) already went out in call_deltas.
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one call for a stream: its id and name (in the first piece
    only) and the next argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class ParseDelta:
    """What one ``feed``/``finish`` step produced.

    ``tool_calls`` are complete calls (the non-streaming result);
    ``call_deltas`` the same calls as a stream sends them, split where the
    text was (see the module docstring).
    """

    content: str = ""
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    dropped: list[DroppedToolCall] = field(default_factory=list)
    call_deltas: list[ToolCallDelta] = field(default_factory=list)

    def add_call_delta(self, piece: ToolCallDelta) -> None:
        """Append ``piece``, merged into the last one of the same call."""
        last = self.call_deltas[-1] if self.call_deltas else None
        if last is not None and last.index == piece.index and piece.id is None:
            piece = ToolCallDelta(
                last.index, last.id, last.name, last.arguments + piece.arguments
            )
            self.call_deltas[-1] = piece
        else:
            self.call_deltas.append(piece)

    def extend(self, other: ParseDelta) -> None:
        self.content += other.content
        self.tool_calls.extend(other.tool_calls)
        self.dropped.extend(other.dropped)
        for piece in other.call_deltas:
            self.add_call_delta(piece)


class _Mode(enum.Enum):
    TEXT = enum.auto()
    SECTION = enum.auto()
    CALL_ID = enum.auto()
    CALL_ARGS = enum.auto()


class _Live(enum.Enum):
    """How a streamed call's arguments go out."""

    OPENING = enum.auto()  # header sent; no argument text but blanks yet
    GROWING = enum.auto()  # an object: each piece as it arrives
    AT_CLOSE = enum.auto()  # not an object (string-encoded): whole, at close
    # Marker text inside a string: finish() may cut the call there, so the
    # rest waits for the call to close.
    PAUSED = enum.auto()


class _SchemaMatcher:
    """Which declared tools' parameter schemas accept an arguments object."""

    def __init__(self, tools: Sequence[DeclaredTool]) -> None:
        self._tools = tools
        self._validators: dict[str, Any] | None = None

    def _build(self) -> dict[str, Any]:
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        validators: dict[str, Any] = {}
        for tool in self._tools:
            schema = tool.parameters
            if not isinstance(schema, Mapping):
                continue
            try:
                cls = validator_for(schema)
                cls.check_schema(schema)
            except SchemaError:
                continue
            from referencing import Registry

            # An empty registry: a remote ``$ref`` is never fetched.
            validators[tool.name] = cls(schema, registry=Registry())
        return validators

    def unique_match(self, value: dict[str, Any]) -> str | None:
        if self._validators is None:
            self._validators = self._build()
        matches = [n for n, v in self._validators.items() if _valid(v, value)]
        return matches[0] if len(matches) == 1 else None


def _valid(validator: Any, value: Any) -> bool:
    try:
        return validator.is_valid(value)
    except Exception:  # e.g. an unresolvable $ref: not a match
        return False


class KimiToolCallParser:
    """Incremental Kimi K2 tool-call parser for one model response.

    Args:
        tools: Tools declared in the request; calls to anything else are
            dropped.
        history_tool_calls: Tool calls already in the conversation; output
            ids continue from there (``functions.NAME:history+i``).
        checkers: Per tool name, the schema errors of an arguments value;
            a call with errors is dropped (``SCHEMA_INVALID``).
        stream_arguments: Tools whose calls stream as they are written (see
            the module docstring); the others are emitted whole.
    """

    def __init__(
        self,
        tools: Sequence[DeclaredTool],
        history_tool_calls: int = 0,
        checkers: Mapping[str, Callable[[Any], list[str]]] | None = None,
        stream_arguments: Collection[str] = (),
    ) -> None:
        self._tools = tuple(tools)
        # Per tool name: the schema errors of an arguments value. Given, a
        # call with errors is dropped (SCHEMA_INVALID) instead of returned.
        self._checkers = checkers
        self._names = tuple(t.name for t in self._tools)
        self._stream_names = frozenset(stream_arguments)
        self._history = history_tool_calls
        self._schemas = _SchemaMatcher(self._tools)
        self._pending = ""
        self._mode = _Mode.TEXT
        self._bare = False  # inside calls that had no section wrapper
        self._section_text = ""
        self._id = ""
        self._args: list[str] = []
        self._has_args_marker = False
        self._in_string = False
        self._escape = False
        # Offset (into the joined args) of the first marker taken as string
        # content, the fallback cut if the string never closes.
        self._first_swallowed: int | None = None
        self._args_len = 0
        # The open call's (index, id, name) once its header went out.
        self._live: tuple[int, str, str] | None = None
        self._live_mode = _Live.OPENING
        self._held_blanks = ""
        self._sent = 0  # argument characters streamed for the open call
        self._emitted = 0
        self._finished = False
        self._out = ParseDelta()

    @property
    def emitted_tool_calls(self) -> int:
        return self._emitted

    def feed(self, text: str) -> ParseDelta:
        """Consume the next piece of model output."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._pending += text
        self._drain(final=False)
        return self._take()

    def parse_whole(self, text: str) -> ParseDelta:
        """A complete model output at once: :meth:`feed`, then :meth:`finish`."""
        result = self.feed(text)
        result.extend(self.finish())
        return result

    def finish(self) -> ParseDelta:
        """End of output: flush held-back text and close any open call."""
        if not self._finished:
            self._finished = True
            self._drain(final=True)
            self._close_at_end()
        return self._take()

    # -- internals ---------------------------------------------------------

    def _take(self) -> ParseDelta:
        out, self._out = self._out, ParseDelta()
        return out

    def _drain(self, final: bool) -> None:
        buf = self._pending
        pos = 0
        while (m := _MARKER_RE.search(buf, pos)) is not None:
            self._on_text(buf[pos : m.start()])
            self._on_marker(m.group())
            pos = m.end()
        rest = buf[pos:]
        cut = len(rest)
        if not final:
            lt = rest.rfind("<")
            if lt >= 0 and _MARKER_RE.fullmatch(rest[lt:], partial=True):
                cut = lt
        self._on_text(rest[:cut])
        self._pending = rest[cut:]

    def _on_text(self, text: str) -> None:
        if not text:
            return
        mode = self._mode
        if mode is _Mode.TEXT:
            self._out.content += text
        elif mode is _Mode.SECTION:
            self._section_text += text
        elif mode is _Mode.CALL_ID:
            self._id += text
        else:
            self._append_args(text)

    def _append_args(self, text: str) -> None:
        self._args.append(text)
        self._args_len += len(text)
        if self._live is not None:
            self._stream_args(text)
        i = 0
        if self._escape:
            self._escape = False
            i = 1
        in_string = self._in_string
        for m in _JSON_STRING_RE.finditer(text, i):
            j = m.start()
            if j < i:
                continue
            if m.group() == '"':
                in_string = not in_string
                i = j + 1
            elif in_string:
                if j + 1 >= len(text):
                    self._escape = True
                i = j + 2
        self._in_string = in_string

    def _stream_args(self, text: str) -> None:
        if self._live_mode is _Live.OPENING:
            text = text.lstrip()  # the returned arguments are stripped
            if not text:
                return
            self._live_mode = _Live.GROWING if text[0] == "{" else _Live.AT_CLOSE
        if self._live_mode is _Live.GROWING and self._first_swallowed is not None:
            self._live_mode = _Live.PAUSED
        if self._live_mode is not _Live.GROWING:
            return
        body = text.rstrip()
        if not body:
            self._held_blanks += text
            return
        piece, self._held_blanks = self._held_blanks + body, text[len(body) :]
        self._sent += len(piece)
        self._out.add_call_delta(ToolCallDelta(self._live[0], arguments=piece))

    def _open_live_call(self) -> None:
        """The header is complete: stream it if its tool streams."""
        resolved = resolve_tool_call_id(self._id.strip(), self._names)
        name = resolved.name
        if name is None or name not in self._stream_names:
            return
        index = self._emitted
        self._emitted += 1
        call_id = make_tool_call_id(name, self._history + index)
        self._live = (index, call_id, name)
        self._out.add_call_delta(ToolCallDelta(index, call_id, name))

    def _flush_section_text(self) -> None:
        text, self._section_text = self._section_text, ""
        if text.strip():
            self._out.content += text

    def _on_marker(self, marker: str) -> None:
        mode = self._mode
        if mode is _Mode.CALL_ARGS and self._in_string:
            # A marker inside a JSON string is taken as text; finish() falls
            # back to the first such marker if the string never closes.
            if self._first_swallowed is None:
                self._first_swallowed = self._args_len
            self._append_args(marker)
            return
        if marker in _CONTROL or marker.startswith("<|reserved_token_"):
            return
        if mode is _Mode.TEXT:
            if marker in _SECTION_BEGINS:
                self._mode, self._bare = _Mode.SECTION, False
            elif marker == TOOL_CALL_BEGIN:
                self._mode, self._bare = _Mode.CALL_ID, True
                self._start_call()
            # Stray ends and argument markers outside a call are dropped.
            return
        if mode is _Mode.SECTION:
            self._flush_section_text()
            if marker == TOOL_CALL_BEGIN:
                self._mode = _Mode.CALL_ID
                self._start_call()
            elif marker in _SECTION_ENDS:
                self._mode = _Mode.TEXT
            return
        if mode is _Mode.CALL_ID and marker == TOOL_CALL_ARGUMENT_BEGIN:
            self._mode = _Mode.CALL_ARGS
            self._has_args_marker = True
            self._open_live_call()
            return
        if marker in _SECTION_BEGINS or marker == TOOL_CALL_ARGUMENT_BEGIN:
            return
        # CALL_END, CALL_BEGIN or SECTION_END close the open call.
        self._close_call(at_end=False)
        if marker == TOOL_CALL_BEGIN:
            self._mode = _Mode.CALL_ID
            self._start_call()
        elif marker in _SECTION_ENDS or self._bare:
            self._mode = _Mode.TEXT
        else:
            self._mode = _Mode.SECTION

    def _start_call(self) -> None:
        self._id = ""
        self._args = []
        self._args_len = 0
        self._has_args_marker = False
        self._in_string = False
        self._escape = False
        self._first_swallowed = None
        self._live = None
        self._live_mode = _Live.OPENING
        self._held_blanks = ""
        self._sent = 0

    def _close_at_end(self) -> None:
        if self._mode is _Mode.SECTION:
            self._flush_section_text()
        elif self._mode is _Mode.CALL_ARGS and self._first_swallowed is not None:
            # The string never closed: the first swallowed marker was real.
            args = "".join(self._args)
            cut = self._first_swallowed
            self._start_call_keep_id(args[:cut])
            self._pending = args[cut:]
            self._drain(final=True)
            self._close_at_end()
            return
        elif self._mode in (_Mode.CALL_ID, _Mode.CALL_ARGS):
            self._close_call(at_end=True)
        self._mode = _Mode.TEXT

    def _start_call_keep_id(self, args: str) -> None:
        raw_id, live = self._id, self._live
        self._start_call()
        self._id = raw_id
        # A streamed call keeps its index; what went out stays out (it ends
        # before the first marker: streaming paused there).
        self._live, self._live_mode = live, _Live.AT_CLOSE
        self._has_args_marker = True
        self._mode = _Mode.CALL_ARGS
        self._args = [args]
        self._args_len = len(args)

    def _close_call(self, at_end: bool) -> None:
        raw_id = self._id.strip()
        raw_args = "".join(self._args)
        live, live_mode, sent = self._live, self._live_mode, self._sent
        if not self._has_args_marker and "{" in raw_id:
            # ``functions.x:0{"a": 1}``: the argument marker was left out.
            brace = raw_id.index("{")
            raw_id, raw_args = raw_id[:brace].strip(), raw_id[brace:]
        self._start_call()
        resolved = resolve_tool_call_id(raw_id, self._names)
        # At the end of output a call without argument text was cut off.
        args = None if at_end and not raw_args.strip() else parse_arguments(raw_args)
        if args is None:
            reason = DropReason.TRUNCATED if at_end else DropReason.INVALID_ARGUMENTS
            self._drop(raw_id, resolved.guessed_name, reason, raw_args, live)
            return
        name = resolved.name
        if name is None and resolved.opaque:
            name = self._name_from_arguments(args)
            if name is None:
                self._drop(
                    raw_id, resolved.guessed_name, DropReason.UNRESOLVED, raw_args
                )
                return
        if name is None:
            self._drop(raw_id, resolved.guessed_name, DropReason.UNDECLARED, raw_args)
            return
        check = self._checkers.get(name) if self._checkers is not None else None
        if check is not None and check(args.value):
            self._drop(raw_id, name, DropReason.SCHEMA_INVALID, raw_args, live)
            return
        if live is not None:
            index, call_id, _ = live
            if live_mode is _Live.PAUSED:
                rest = args.text[sent:]
                self._out.add_call_delta(ToolCallDelta(index, arguments=rest))
            elif live_mode is not _Live.GROWING:
                self._out.add_call_delta(ToolCallDelta(index, arguments=args.text))
        else:
            index = self._emitted
            self._emitted += 1
            call_id = make_tool_call_id(name, self._history + index)
            self._out.add_call_delta(ToolCallDelta(index, call_id, name, args.text))
        self._out.tool_calls.append(
            ParsedToolCall(index=index, id=call_id, name=name, arguments=args.text)
        )

    def _name_from_arguments(self, args: Arguments) -> str | None:
        if len(self._tools) == 1:
            return self._tools[0].name
        return self._schemas.unique_match(args.value)

    def _drop(
        self,
        raw_id: str,
        name: str,
        reason: DropReason,
        args: str,
        live: tuple[int, str, str] | None = None,
    ) -> None:
        self._out.dropped.append(
            DroppedToolCall(raw_id, name, reason, args, streamed=live is not None)
        )


def parse_tool_calls(
    text: str,
    tools: Sequence[DeclaredTool],
    history_tool_calls: int = 0,
    checkers: Mapping[str, Callable[[Any], list[str]]] | None = None,
    stream_arguments: Collection[str] = (),
) -> ParseDelta:
    """Parse a complete model output."""
    parser = KimiToolCallParser(tools, history_tool_calls, checkers, stream_arguments)
    return parser.parse_whole(text)
