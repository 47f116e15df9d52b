# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""String ``minLength``/``maxLength``, enforced token by token.

xgrammar unrolls a length-bounded string into one grammar state per character
(``maxLength: 100`` costs ~9 s of cold compile on a 163,840-token vocabulary;
``minLength: 999999999999`` never finishes). The Enforcer compiles strings
unbounded and instead follows the arguments as they are written::

    {"city": "Par|      path ("city",), inside a string value, 3 chars so far

:class:`JsonCursor` tracks the path, the character count (code points, like
``jsonschema``) and what may come next; :mod:`.paths` finds the lengths
allowed at a path; :class:`LengthMasks` turns (count, lengths) into an
allowed-token mask. A character is counted where it starts (a UTF-8 lead
byte, an escape's backslash), so a count taken mid-token never falls short of
what is written; a ``\\uXXXX`` low surrogate right after a high one takes
its count back, so a closed string's count is exact.

A real vocabulary also has tokens that open a string *and* write into it
(``b' "--'``, ``b'":"ab'``, ``b'", "x'``, ``b'""'``): seen only from inside
the string, they would overshoot ``maxLength`` (or complete a string shorter
than ``minLength``) in one step. :class:`QuoteMasks` bans, in a tool with
length bounds, every token that could open a *value* string anywhere but at
its last byte, from each place the cursor can be (:class:`Where`).
"""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Path = tuple[str | int, ...]

_QUOTE, _BACKSLASH = 0x22, 0x5C
# JSON whitespace bytes.
BLANKS = frozenset(b" \t\n\r")
# What the JSON may hold next, outside strings.
_KEY, _COLON, _VALUE, _AFTER = range(4)


def count_chars(data: bytes) -> int:
    """Code points in UTF-8 ``data`` (a split character counts at its lead)."""
    return sum(1 for b in data if b & 0xC0 != 0x80)


class Where(enum.IntEnum):
    """Where the cursor is, as far as a quote in the next token matters."""

    KEY = 0  # expecting a key (or the object's end)
    COLON = 1  # after a key
    VALUE_OBJ = 2  # expecting a member's value
    VALUE_ARR = 3  # expecting an item, or the root value
    AFTER_OBJ = 4  # after a member's value
    AFTER_ARR = 5  # after an item, or after the root value
    IN_KEY = 6
    IN_VALUE_OBJ = 7  # inside a member's string value
    IN_VALUE_ARR = 8  # inside an item's (or the root's) string value
    ESCAPE_KEY = 9  # inside an escape (after its backslash) in a key
    ESCAPE_VALUE_OBJ = 10
    ESCAPE_VALUE_ARR = 11


class JsonCursor:
    """Where an incrementally written JSON value is, from its bytes alone.

    Trusts the grammar for syntax: it only needs to know the path of the
    value being written, what may come next and, inside a string, how many
    characters it has.
    """

    def __init__(self) -> None:
        # Frames: [is_object, key_or_index]
        self._stack: list[list[Any]] = []
        self._expect = _VALUE
        self.in_string = False
        self._is_key = False
        self._escape = 0  # 0: none, -1: after backslash, n>0: hex digits left
        self._hex = 0  # the \u escape's value so far
        self._high = False  # the last thing written was a high surrogate
        self._key_raw = bytearray()
        self.chars = 0
        self.blank_run = 0  # whitespace characters in a row, outside strings

    @property
    def in_value_string(self) -> bool:
        return self.in_string and not self._is_key

    def path(self) -> Path:
        return tuple(frame[1] for frame in self._stack)

    @property
    def key_so_far(self) -> bytes:
        """The raw bytes of the key being written (empty outside keys)."""
        return bytes(self._key_raw) if self.in_string and self._is_key else b""

    def where(self) -> Where:
        in_object = bool(self._stack and self._stack[-1][0])
        if self.in_string:
            if self._escape:
                if self._is_key:
                    return Where.ESCAPE_KEY
                return Where.ESCAPE_VALUE_OBJ if in_object else Where.ESCAPE_VALUE_ARR
            if self._is_key:
                return Where.IN_KEY
            return Where.IN_VALUE_OBJ if in_object else Where.IN_VALUE_ARR
        if self._expect == _KEY:
            return Where.KEY
        if self._expect == _COLON:
            return Where.COLON
        if self._expect == _VALUE:
            return Where.VALUE_OBJ if in_object else Where.VALUE_ARR
        return Where.AFTER_OBJ if in_object else Where.AFTER_ARR

    def feed(self, data: bytes) -> None:
        for b in data:
            if self.in_string:
                self._string_byte(b)
                continue
            if b in BLANKS:
                self.blank_run += 1
                continue
            self.blank_run = 0
            if b == 0x7B:  # {
                self._stack.append([True, None])
                self._expect = _KEY
            elif b == 0x5B:  # [
                self._stack.append([False, 0])
                self._expect = _VALUE
            elif b in (0x7D, 0x5D):  # } ]
                if self._stack:
                    self._stack.pop()
                self._expect = _AFTER
            elif b == 0x2C and self._stack:  # ,
                top = self._stack[-1]
                if top[0]:
                    self._expect = _KEY
                else:
                    top[1] += 1
                    self._expect = _VALUE
            elif b == 0x3A:  # :
                self._expect = _VALUE
            elif b == _QUOTE:
                self._is_key = self._expect == _KEY and bool(
                    self._stack and self._stack[-1][0]
                )
                self.in_string = True
                self.chars = 0
                self._key_raw.clear()
            elif self._expect == _VALUE:
                self._expect = _AFTER  # a number or literal

    @property
    def escape_left(self) -> int:
        """Bytes the escape being written still needs (0: none; 1 right after
        the backslash, as far as the next token can tell)."""
        return 1 if self._escape == -1 else self._escape

    def _string_byte(self, b: int) -> None:
        if self._is_key:
            self._key_raw.append(b)
        if self._escape == -1:
            self._escape = 4 if b == 0x75 else 0  # \uXXXX
            self._hex = 0
            self._high = self._high and b == 0x75
        elif self._escape > 0:
            self._escape -= 1
            self._hex = self._hex * 16 + int(chr(b), 16) if _is_hex(b) else 0
            if not self._escape:
                # A low surrogate after a high one: one character, not two.
                if 0xDC00 <= self._hex <= 0xDFFF and self._high:
                    self.chars -= 1
                self._high = 0xD800 <= self._hex <= 0xDBFF
        elif b == _BACKSLASH:
            self._escape = -1
            self.chars += 1  # counted where it starts
        elif b == _QUOTE:
            self.in_string = False
            self._high = False
            if self._is_key:
                self._expect = _COLON
                raw = bytes(self._key_raw[:-1]).decode("utf-8", "replace")
                try:
                    self._stack[-1][1] = json.loads(f'"{raw}"')
                except ValueError:
                    self._stack[-1][1] = raw
            else:
                self._expect = _AFTER
        else:
            self._high = False
            if b & 0xC0 != 0x80:
                self.chars += 1


def _is_hex(b: int) -> bool:
    return 0x30 <= b <= 0x39 or 0x41 <= b <= 0x46 or 0x61 <= b <= 0x66


Span = tuple[int, int | None]  # (low, high); high None: unbounded


@dataclass(frozen=True)
class Lengths:
    """The lengths a string may have: sorted, disjoint, closed spans."""

    spans: tuple[Span, ...]

    @classmethod
    def of(cls, spans: Iterable[Span]) -> Lengths | None:
        """Merged spans; None when every length is allowed (or none given)."""
        merged: list[list[Any]] = []
        for lo, hi in sorted(spans, key=lambda s: s[0]):
            last = merged[-1] if merged else None
            if last is not None and (last[1] is None or lo <= last[1] + 1):
                last[1] = None if last[1] is None or hi is None else max(last[1], hi)
            else:
                merged.append([lo, hi])
        if not merged or merged == [[0, None]]:
            return None
        return cls(tuple((lo, hi) for lo, hi in merged))

    @classmethod
    def none(cls) -> Lengths:
        """No length at all (no string is valid here)."""
        return cls(())

    @property
    def low(self) -> int:
        return self.spans[0][0] if self.spans else 0

    @property
    def high(self) -> int | None:
        return self.spans[-1][1] if self.spans else -1

    def allows(self, n: int) -> bool:
        return any(lo <= n and (hi is None or n <= hi) for lo, hi in self.spans)


class LengthMasks:
    """Allowed-token masks inside a bounded string, cached by what is left.

    Built once per vocabulary from each token's bytes. A token without a
    closing quote may add characters up to the highest length; one with a
    quote closes the string, so the characters before its quote must end on
    an allowed length (what follows the quote is :class:`QuoteMasks`' part).
    Characters are counted as :class:`JsonCursor` counts them. Never offered:
    empty tokens (they neither write nor close), tokens with a control byte,
    and closing tokens with a ``\\u`` escape (its surrogate may pair with
    the previous token's). Inside an escape only tokens that stay inside it
    are offered (one escape byte, or hex digits).
    """

    def __init__(self, token_bytes: Sequence[bytes], cache_size: int = 256) -> None:
        n = len(token_bytes)
        self.vocab_size = n
        chars = np.zeros(n, dtype=np.int64)
        quote_at = np.full(n, -1, dtype=np.int64)  # chars before the closing '"'
        usable = np.zeros(n, dtype=bool)
        sizes = np.zeros(n, dtype=np.int64)
        for i, data in enumerate(token_bytes):
            sizes[i] = len(data)
            if data:
                usable[i], chars[i], quote_at[i] = _count_string_piece(data)
        self._chars, self._quote_at, self._usable = chars, quote_at, usable
        self._sizes = sizes
        self._has_quote = quote_at >= 0
        self._longest = int(max(chars.max(initial=0), quote_at.max(initial=0)))
        self._cache: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def words(self, written: int, lengths: Lengths, escape_left: int = 0) -> np.ndarray:
        """int32 bitmask words allowing what may follow ``written`` chars
        (``escape_left``: bytes the current escape still needs)."""
        if escape_left:
            key: tuple[Any, ...] = ("escape", escape_left)
            cached = self._cache.get(key)
            if cached is None:
                cached = _pack((self._sizes >= 1) & (self._sizes <= escape_left))
                self._cache[key] = cached
            return cached
        # Budgets beyond the longest token are all the same mask.
        cap = self._longest + 1
        high = lengths.high
        room = cap if high is None else min(high - written, cap)
        # Closing after q more chars is allowed for q in these spans.
        close: list[tuple[int, int]] = []
        for lo, hi in lengths.spans:
            a = max(lo - written, 0)
            b = cap if hi is None else min(hi - written, cap)
            if a <= b:
                close.append((a, b))
        key = (room, *close)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        closable = np.zeros(cap + 1, dtype=bool)
        for a, b in close:
            closable[a : b + 1] = True
        q = np.clip(self._quote_at, 0, cap)
        allowed = self._usable & np.where(
            self._has_quote, closable[q], self._chars <= room
        )
        words = _pack(allowed)
        self._cache[key] = words
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return words


def _count_string_piece(data: bytes) -> tuple[bool, int, int]:
    """(usable, chars, chars before the closing quote or -1) for ``data``
    written inside a string, outside an escape."""
    chars = 0
    escape = 0  # bytes of the current escape still to come (-1: its letter)
    unicode = False
    for b in data:
        if escape == -1:
            escape = 4 if b == 0x75 else 0
            unicode = unicode or b == 0x75
        elif escape > 0:
            escape -= 1
        elif b == _BACKSLASH:
            escape = -1
            chars += 1
        elif b == _QUOTE:
            return not unicode, chars, chars
        elif b < 0x20:
            return False, 0, -1
        elif b & 0xC0 != 0x80:
            chars += 1
    return True, chars, -1


class QuoteMasks:
    """Per :class:`Where`, the tokens that open no value string early.

    A token is allowed where it opens a value string only with its last byte
    (the next step's length mask then sees the string from its first
    character). Simulated from each place, conservatively: a string whose
    role the token alone cannot tell (after it closed the container it began
    in) counts as a value; an over-count only bans more. Tokens without a
    quote are always allowed, and so is the bare ``"`` wherever the grammar
    wants one.
    """

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        n = len(token_bytes)
        allowed = np.ones((len(Where), n), dtype=bool)
        # Tokens that only open a string and write into it (b' "~/'): the
        # characters they write, else -1.
        opening = np.full(n, -1, dtype=np.int64)
        for i, data in enumerate(token_bytes):
            if b'"' in data:
                for where in Where:
                    allowed[where, i] = opens_no_value_early(data, where)
                opening[i] = _opening_chars(data)
        self._words = np.stack([_pack(row) for row in allowed])
        self._words.flags.writeable = False
        # One stable array per place (callers memoise by identity).
        self._by_where = [self._words[where] for where in Where]
        self._opening = opening
        self._cap = int(opening.max(initial=0))
        self._opening_cache: dict[int, np.ndarray] = {}
        self._with_opening: dict[tuple[Where, int], np.ndarray] = {}

    def words(self, where: Where) -> np.ndarray:
        return self._by_where[where]

    def words_opening(self, where: Where, room: int | None) -> np.ndarray:
        """``words(where) | opening_words(room)``, memoised (read-only)."""
        key = (where, self._cap if room is None else min(room, self._cap))
        words = self._with_opening.get(key)
        if words is None:
            words = self._words[where] | self.opening_words(room)
            words.flags.writeable = False
            self._with_opening[key] = words
        return words

    def opening_words(self, room: int | None) -> np.ndarray:
        """Where a value string is expected whose path allows at most
        ``room`` characters (None: any): tokens that open it and write at
        most that many (they do not close it, so no lower bound applies)."""
        room = self._cap if room is None else min(room, self._cap)
        words = self._opening_cache.get(room)
        if words is None:
            opening = self._opening
            words = _pack((opening >= 1) & (opening <= room))
            self._opening_cache[room] = words
        return words


def _opening_chars(data: bytes) -> int:
    """For blanks, a quote, then only characters of the string (escapes
    included; no closing quote): the characters written, else -1."""
    body = data.lstrip(b" \t\n\r")
    if body[:1] != b'"' or len(body) < 2:
        return -1
    usable, chars, closed_at = _count_string_piece(body[1:])
    return chars if usable and closed_at < 0 else -1


def opens_no_value_early(data: bytes, where: Where) -> bool:
    """False if ``data`` written at ``where`` may open a value string before
    its last byte (writing into it, or closing it, in the same token)."""
    escaped = {
        Where.ESCAPE_KEY: Where.IN_KEY,
        Where.ESCAPE_VALUE_OBJ: Where.IN_VALUE_OBJ,
        Where.ESCAPE_VALUE_ARR: Where.IN_VALUE_ARR,
    }
    if where in escaped:
        # The first byte belongs to the escape (hex digits after it are
        # string content either way).
        return opens_no_value_early(data[1:], escaped[where])
    last = len(data) - 1
    in_object = where in (
        Where.KEY,
        Where.COLON,
        Where.VALUE_OBJ,
        Where.AFTER_OBJ,
        Where.IN_KEY,
        Where.IN_VALUE_OBJ,
    )
    outer: bool | None = in_object  # the enclosing container, while known
    stack: list[bool] = []  # containers the token opens: True for objects
    expect = {
        Where.KEY: _KEY,
        Where.COLON: _COLON,
        Where.VALUE_OBJ: _VALUE,
        Where.VALUE_ARR: _VALUE,
    }.get(where, _AFTER)
    string = where in (Where.IN_KEY, Where.IN_VALUE_OBJ, Where.IN_VALUE_ARR)
    is_key = where is Where.IN_KEY
    escape = False
    for i, b in enumerate(data):
        if string:
            if escape:
                escape = False
            elif b == _BACKSLASH:
                escape = True
            elif b == _QUOTE:
                string = False
                expect = _COLON if is_key else _AFTER
            continue
        if b in BLANKS:
            continue
        if b == _QUOTE:
            if expect != _KEY:
                return i == last  # a value (or a string of unknown role)
            string, is_key = True, True
        elif b == 0x7B:  # {
            stack.append(True)
            expect = _KEY
        elif b == 0x5B:  # [
            stack.append(False)
            expect = _VALUE
        elif b in (0x7D, 0x5D):  # } ]
            if stack:
                stack.pop()
            else:
                outer = None  # left the container the token began in
            expect = _AFTER
        elif b == 0x2C:  # ,
            container = stack[-1] if stack else outer
            expect = _KEY if container is True else _VALUE
        elif b == 0x3A:  # :
            expect = _VALUE
        elif expect == _VALUE:
            expect = _AFTER
    return True


def _pack(allowed: np.ndarray) -> np.ndarray:
    """Boolean per id → int32 bitmask words (padded to whole words)."""
    pad = (-len(allowed)) % 32
    if pad:
        allowed = np.concatenate([allowed, np.zeros(pad, dtype=bool)])
    return np.packbits(allowed, bitorder="little").view(np.int32)
