# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""String ``minLength``/``maxLength``, enforced token by token.

xgrammar unrolls a length-bounded string into one grammar state per character
(``maxLength: 100`` costs ~9 s of cold compile on a 163,840-token vocabulary;
``minLength: 999999999999`` never finishes). The Enforcer compiles strings
unbounded and instead follows the arguments as they are written::

    {"city": "Par|      path ("city",), inside a string value, 3 chars so far

:class:`JsonCursor` tracks the path and the character count (code points,
like ``jsonschema``); :func:`string_bounds` finds the bounds that apply at a
path; :class:`LengthMasks` turns (count, bounds) into an allowed-token mask.
Inside a bounded string escapes are not offered (as in xgrammar's own bounded
strings), so every character is one code point of the token's bytes.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import regex

Path = tuple[str | int, ...]

_QUOTE, _BACKSLASH = 0x22, 0x5C
# JSON whitespace bytes.
BLANKS = frozenset(b" \t\n\r")


def count_chars(data: bytes) -> int:
    """Code points in UTF-8 ``data`` (a split character counts at its lead)."""
    return sum(1 for b in data if b & 0xC0 != 0x80)


class JsonCursor:
    """Where an incrementally written JSON value is, from its bytes alone.

    Trusts the grammar for syntax: it only needs to know the path of the
    value being written and, inside a string, how many characters it has.
    """

    def __init__(self) -> None:
        # Frames: [is_object, key_or_index, expecting_key]
        self._stack: list[list[Any]] = []
        self.in_string = False
        self._is_key = False
        self._escape = 0  # 0: none, -1: after backslash, n>0: hex digits left
        self._key_raw = bytearray()
        self.chars = 0
        self.blank_run = 0  # whitespace characters in a row, outside strings

    @property
    def in_value_string(self) -> bool:
        return self.in_string and not self._is_key

    def path(self) -> Path:
        return tuple(frame[1] for frame in self._stack)

    def feed(self, data: bytes) -> None:
        for b in data:
            if self.in_string:
                self._string_byte(b)
                continue
            self.blank_run = self.blank_run + 1 if b in BLANKS else 0
            if b == 0x7B:  # {
                self._stack.append([True, None, True])
            elif b == 0x5B:  # [
                self._stack.append([False, 0, False])
            elif b in (0x7D, 0x5D):  # } ]
                if self._stack:
                    self._stack.pop()
            elif b == 0x2C and self._stack:  # ,
                top = self._stack[-1]
                if top[0]:
                    top[2] = True
                else:
                    top[1] += 1
            elif b == 0x3A and self._stack:  # :
                self._stack[-1][2] = False
            elif b == _QUOTE:
                top = self._stack[-1] if self._stack else None
                self._is_key = bool(top and top[0] and top[2])
                self.in_string = True
                self.chars = 0
                self._key_raw.clear()

    def _string_byte(self, b: int) -> None:
        if self._is_key:
            self._key_raw.append(b)
        if self._escape == -1:
            self._escape = 4 if b == 0x75 else 0  # \uXXXX
            if not self._escape:
                self.chars += 1
        elif self._escape > 0:
            self._escape -= 1
            if not self._escape:
                self.chars += 1
        elif b == _BACKSLASH:
            self._escape = -1
        elif b == _QUOTE:
            self.in_string = False
            if self._is_key:
                raw = bytes(self._key_raw[:-1]).decode("utf-8", "replace")
                try:
                    self._stack[-1][1] = json.loads(f'"{raw}"')
                except ValueError:
                    self._stack[-1][1] = raw
        elif b & 0xC0 != 0x80:
            self.chars += 1


@dataclass(frozen=True)
class Bounds:
    low: int
    high: int | None  # None: unbounded


def string_bounds(schema: dict[str, Any], path: Path) -> Bounds | None:
    """The length bounds for a string written at ``path``; None if unbounded.

    Where several sub-schemas apply (``anyOf``...), the loosest bounds win, so
    the mask never blocks a string some branch accepts.
    """
    nodes = _expand(schema, [schema])
    for step in path:
        nxt: list[Any] = []
        for node in nodes:
            nxt.extend(_child(schema, node, step))
        nodes = _expand(schema, nxt)
    low: int | None = None
    high: int | None = 0
    for node in nodes:
        if not _accepts_string(node):
            continue
        if not isinstance(node, dict):
            return None
        lo, hi = node.get("minLength", 0), node.get("maxLength")
        low = lo if low is None else min(low, lo)
        high = None if hi is None or high is None else max(high, hi)
    if low is None or (low == 0 and high is None):
        return None
    return Bounds(low, high)


def _accepts_string(node: Any) -> bool:
    if node is True:
        return True
    if not isinstance(node, dict):
        return False
    declared = node.get("type")
    if declared is None:
        return not any(k in node for k in ("enum", "const"))
    return "string" in (declared if isinstance(declared, list) else [declared])


def _resolve(root: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#"):
        return True  # remote refs are not followed: no bound known
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return node


def _expand(root: dict[str, Any], nodes: Sequence[Any], depth: int = 0) -> list[Any]:
    out: list[Any] = []
    for node in nodes:
        if not isinstance(node, dict):
            out.append(node)
            continue
        branches = [
            b for key in ("anyOf", "oneOf", "allOf") for b in node.get(key) or []
        ]
        if "$ref" in node and depth < 32:
            branches.append(_resolve(root, node["$ref"]))
        if branches and depth < 32:
            out.extend(_expand(root, branches, depth + 1))
            rest = {
                k: v for k, v in node.items() if k not in ("anyOf", "oneOf", "allOf")
            }
            if "type" in rest:
                out.append(rest)
        else:
            out.append(node)
    return out


def _child(root: dict[str, Any], node: Any, step: str | int) -> list[Any]:
    if not isinstance(node, dict):
        return [True] if node is True else []
    if isinstance(step, int):
        prefix = node.get("prefixItems") or []
        if step < len(prefix):
            return [prefix[step]]
        items = node.get("items", True)
        return [items] if items is not False else []
    props = node.get("properties") or {}
    if step in props:
        return [props[step]]
    matched = [
        sub
        for pattern, sub in (node.get("patternProperties") or {}).items()
        if regex.search(pattern, step)
    ]
    if matched:
        return matched
    extra = node.get("additionalProperties", True)
    return [extra] if extra is not False else []


class LengthMasks:
    """Allowed-token masks for a bounded string, cached by remaining budget.

    Built once per vocabulary from each token's bytes.
    """

    def __init__(self, token_bytes: Sequence[bytes], cache_size: int = 256) -> None:
        n = len(token_bytes)
        self.vocab_size = n
        chars = np.zeros(n, dtype=np.int64)
        quote_at = np.full(n, -1, dtype=np.int64)  # chars before the first '"'
        usable = np.zeros(n, dtype=bool)  # no escape, no control byte first
        for i, data in enumerate(token_bytes):
            if not data:
                continue
            q = data.find(b'"')
            head = data if q < 0 else data[:q]
            if b"\\" in head or any(c < 0x20 for c in head):
                continue
            usable[i] = True
            if q < 0:
                chars[i] = count_chars(head)
            else:
                quote_at[i] = count_chars(head)
        self._chars, self._quote_at, self._usable = chars, quote_at, usable
        self._has_quote = quote_at >= 0
        self._longest = int(max(chars.max(initial=0), quote_at.max(initial=0)))
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def words(self, written: int, bounds: Bounds) -> np.ndarray:
        """int32 bitmask words allowing what may follow ``written`` chars."""
        # Budgets beyond the longest token are all the same mask.
        cap = self._longest + 1
        need = min(max(bounds.low - written, 0), cap)
        room = cap if bounds.high is None else min(bounds.high - written, cap)
        key = (need, room)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        q = self._quote_at
        allowed = self._usable & np.where(
            self._has_quote,
            (q >= need) & (q <= room),
            self._chars <= room,
        )
        pad = (-self.vocab_size) % 32
        if pad:
            allowed = np.concatenate([allowed, np.zeros(pad, dtype=bool)])
        words = np.packbits(allowed, bitorder="little").view(np.int32)
        self._cache[key] = words
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return words
