# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The token facts the Enforcer needs, computed once per vocabulary.

* the ids of Kimi's markers (``<|tool_call_begin|>`` is one token, 163597);
* which ids are special (markers, chat and reserved tokens): inside tool
  arguments none of them may be written, and no call header offers one.
  Moonshot's tokenizer has 256 tiktoken specials (ids 163,584-163,839), but
  ``get_added_vocab()`` lists 23 of them, ``all_special_ids`` 16, and
  xgrammar none (it reads every marker as a plain byte string), so
  :func:`tokenizer_special_ids` gathers them from every source;
* every token's bytes, to offer exactly the tokens that continue
  ``functions.NAME:IDX`` in a call header.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vllm_kimi_tools import tokens as kt
from vllm_kimi_tools.enforcer.lengths import BLANKS, LengthMasks, QuoteMasks


@dataclass(frozen=True)
class Markers:
    section_begin: int
    section_end: int
    call_begin: int
    argument_begin: int
    call_end: int
    think_begin: int | None
    think_end: int | None
    stops: tuple[int, ...]
    # Chat structure: where the prompt's turns begin and end.
    im_middle: int | None = None
    im_assistant: int | None = None
    turn_marks: tuple[int, ...] = ()  # role markers and <|im_end|>

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int]) -> Markers:
        missing = kt.missing_tool_tokens(vocab)
        if missing:
            raise ValueError(f"not a Kimi vocabulary; missing {', '.join(missing)}")
        stops = tuple(vocab[t] for t in (kt.IM_END, "[EOS]") if t in vocab)
        return cls(
            section_begin=vocab[kt.TOOL_CALLS_SECTION_BEGIN],
            section_end=vocab[kt.TOOL_CALLS_SECTION_END],
            call_begin=vocab[kt.TOOL_CALL_BEGIN],
            argument_begin=vocab[kt.TOOL_CALL_ARGUMENT_BEGIN],
            call_end=vocab[kt.TOOL_CALL_END],
            think_begin=vocab.get(kt.THINK_BEGIN),
            think_end=vocab.get(kt.THINK_END),
            stops=stops,
            im_middle=vocab.get(kt.IM_MIDDLE),
            im_assistant=vocab.get(kt.IM_ASSISTANT),
            turn_marks=tuple(
                vocab[t]
                for t in (kt.IM_USER, kt.IM_ASSISTANT, kt.IM_SYSTEM, kt.IM_END)
                if t in vocab
            ),
        )

    def tool_markup(self) -> tuple[int, ...]:
        """Markers that may only appear inside a tool-call section."""
        return (self.call_begin, self.argument_begin, self.call_end, self.section_end)


# Memoised call-header continuations kept at most (then the memo starts over).
CONTINUATIONS_CACHE = 4096  # a few MB at most
# Combined argument masks kept (20 KB each for Kimi's vocabulary).
COMBINED_CACHE = 512


@dataclass
class TokenTable:
    token_bytes: Sequence[bytes]
    markers: Markers
    special_ids: frozenset[int]
    _by_bytes: dict[bytes, list[int]] = field(init=False, repr=False)
    _special_clear: np.ndarray = field(init=False, repr=False)
    _no_blank_start: np.ndarray = field(init=False, repr=False)
    _lengths: LengthMasks | None = field(default=None, init=False, repr=False)
    _quotes: QuoteMasks | None = field(default=None, init=False, repr=False)
    # Call-header continuations by (written, targets), shared by requests;
    # and the tokens that are a prefix of what is left of one target, shared
    # by every tool set with that tool.
    _continuations: dict[tuple[bytes, tuple[bytes, ...]], tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False
    )
    _prefix_tokens: dict[bytes, tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False
    )
    # Argument rows' masks beyond the grammar, ANDed into one, by their parts.
    _combined: dict[tuple[int, ...], tuple[Any, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        by_bytes: dict[bytes, list[int]] = defaultdict(list)
        for i, data in enumerate(self.token_bytes):
            if data and i not in self.special_ids:
                by_bytes[data].append(i)
        self._by_bytes = dict(by_bytes)
        self.max_token_bytes = max((len(b) for b in self._by_bytes), default=1)
        # AND-mask words that clear every special id but <|tool_call_end|>.
        n_words = (self.vocab_size + 31) // 32
        bits = np.ones(n_words * 32, dtype=bool)
        bits[list(self.special_ids - {self.markers.call_end})] = False
        self._special_clear = np.packbits(bits, bitorder="little").view(np.int32)
        # ... and every special id but the turn's ends (a JSON reply's end).
        bits = np.ones(n_words * 32, dtype=bool)
        bits[list(self.special_ids - set(self.markers.stops))] = False
        self._reply_clear = np.packbits(bits, bitorder="little").view(np.int32)
        # AND-mask words that clear tokens starting with whitespace.
        bits = np.ones(n_words * 32, dtype=bool)
        blank = [i for i, b in enumerate(self.token_bytes) if b and b[0] in BLANKS]
        bits[blank] = False
        self._no_blank_start = np.packbits(bits, bitorder="little").view(np.int32)

    @classmethod
    def build(
        cls,
        token_bytes: Sequence[bytes],
        vocab: Mapping[str, int],
        special_ids: Collection[int],
    ) -> TokenTable:
        markers = Markers.from_vocab(vocab)
        specials = set(special_ids)
        specials.update((*markers.tool_markup(), markers.section_begin, *markers.stops))
        specials.update(i for i in (markers.think_begin, markers.think_end) if i)
        return cls(list(token_bytes), markers, frozenset(specials))

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @property
    def special_clear_words(self) -> np.ndarray:
        return self._special_clear

    @property
    def reply_clear_words(self) -> np.ndarray:
        return self._reply_clear

    @property
    def no_blank_start_words(self) -> np.ndarray:
        return self._no_blank_start

    @property
    def lengths(self) -> LengthMasks:
        if self._lengths is None:
            self._lengths = LengthMasks(self.token_bytes)
        return self._lengths

    @property
    def quotes(self) -> QuoteMasks:
        if self._quotes is None:
            self._quotes = QuoteMasks(self.token_bytes)
        return self._quotes

    def combined_words(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """The AND of ``parts`` (int32 bitmask words), read-only, memoised by
        the parts' identity: they are the tables' own cached arrays (kept
        alive by the memo), so rows in the same state of the same schema
        share one array."""
        key = tuple(map(id, parts))
        found = _recent(self._combined, key)
        if found is not None and all(a is b for a, b in zip(found[0], parts)):
            return found[1]
        words = parts[0].copy()
        for part in parts[1:]:
            words &= part
        words.flags.writeable = False
        _remember(self._combined, key, (tuple(parts), words), COMBINED_CACHE)
        return words

    def continuations(
        self, written: bytes, targets: Sequence[bytes]
    ) -> tuple[int, ...]:
        """Non-special tokens that extend ``written`` towards some target
        (sorted; memoised: requests with the same tools share the lists)."""
        if len(targets) == 1:  # most of a header: one tool is left
            target = targets[0]
            n = len(written)
            if len(target) <= n or not target.startswith(written):
                return ()
            return self._prefixes_of(target[n:])
        targets = tuple(targets)
        key = (written, targets)
        found = _recent(self._continuations, key)
        if found is None:
            found = self._continue(written, targets)
            _remember(self._continuations, key, found, CONTINUATIONS_CACHE)
        return found

    def _continue(self, written: bytes, targets: tuple[bytes, ...]) -> tuple[int, ...]:
        n = len(written)
        out: set[int] = set()
        for target in targets:
            if len(target) > n and target.startswith(written):
                out.update(self._prefixes_of(target[n:]))
        return tuple(sorted(out))

    def _prefixes_of(self, rest: bytes) -> tuple[int, ...]:
        """Non-special tokens whose bytes are a prefix of ``rest`` (sorted;
        memoised)."""
        found = _recent(self._prefix_tokens, rest)
        if found is None:
            by_bytes = self._by_bytes
            found = tuple(
                sorted(
                    i
                    for end in range(1, min(len(rest), self.max_token_bytes) + 1)
                    for i in by_bytes.get(rest[:end], ())
                )
            )
            _remember(self._prefix_tokens, rest, found, CONTINUATIONS_CACHE)
        return found


def _recent(memo: dict[Any, Any], key: Any) -> Any:
    """``memo[key]`` (None: absent), now its most recent entry."""
    found = memo.pop(key, None)
    if found is not None:
        memo[key] = found
    return found


def _remember(memo: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Set ``memo[key]``, keeping at most ``size`` entries: the least recently
    used one goes (a server with many tools keeps its busy ones)."""
    memo.pop(key, None)
    if len(memo) >= size:
        del memo[next(iter(memo))]
    memo[key] = value


def tokenizer_special_ids(tokenizer: Any, vocab_size: int) -> set[int]:
    """Every special id of a Hugging Face tokenizer, below ``vocab_size``.

    The union of ``all_special_ids``, the added vocabulary, a tiktoken-style
    ``special_tokens`` mapping (Moonshot's remote code has one, with all 256),
    the ids past the tokenizer's own length (padding of the model's
    embedding) and, for a Kimi-sized vocabulary, :data:`tokens.SPECIAL_ID_RANGE`.
    """
    specials = set(getattr(tokenizer, "all_special_ids", ()) or ())
    specials.update(tokenizer.get_added_vocab().values())
    mapping = getattr(tokenizer, "special_tokens", None)
    if isinstance(mapping, Mapping):
        specials.update(v for v in mapping.values() if isinstance(v, int))
    specials.update(range(len(tokenizer), vocab_size))
    if vocab_size == kt.VOCAB_SIZE:
        specials.update(kt.SPECIAL_ID_RANGE)
    return {i for i in specials if 0 <= i < vocab_size}
