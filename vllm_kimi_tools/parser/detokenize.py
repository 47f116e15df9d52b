# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The model's exact text, whatever vLLM's slow detokenizer did to it (pure).

Moonshot's tokenizer is a Python ("slow") tokenizer. vLLM's slow incremental
detokenizer joins every added token (markers, ``<think>``, chat tokens) to
the text around it with a space unless the request sets
``spaces_between_special_tokens=False``::

    model wrote:    好的。<|tool_calls_section_begin|><|tool_call_begin|>f
    text returned: ␣好的。␣<|tool_calls_section_begin|>␣<|tool_call_begin|>␣f

The parsers set the flag on Chat Completions requests. The Responses API
(vLLM 0.32) has no such field, so there the parsers recover the exact text
themselves: :func:`unspace` inverts the join on a complete text, and
:class:`TokenText` decodes a stream's token ids to text directly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import regex as re


def added_token_pattern(added: Collection[str]) -> re.Pattern[str]:
    """A regex matching any of ``added`` (longest first)."""
    ordered = sorted(added, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in ordered) or r"(?!)")


def unspace(text: str, added: re.Pattern[str], *, leading: bool = True) -> str:
    """Undo the slow detokenizer's ``" ".join`` around added tokens.

    vLLM joins the output's sub-texts (runs of ordinary tokens, and each added
    token on its own) with one space, and the first one to the prompt's last
    sub-text as well when the prompt ends with an added token (``leading``;
    every Kimi generation prompt does). So each run of ordinary text between
    two added tokens gained a space at both ends (one space alone: the run
    was empty), and the run before the first or after the last added token
    gained one on its inner side. A boundary space that is missing (an added
    token's text written with ordinary tokens) is left alone.
    """
    out: list[str] = []
    pos = 0
    matches = list(added.finditer(text))
    for k in range(len(matches) + 1):
        end = matches[k].start() if k < len(matches) else len(text)
        piece = text[pos:end]
        left = k > 0 or leading
        right = k < len(matches)
        if left and right and piece == " ":
            piece = ""
        else:
            if left and piece.startswith(" "):
                piece = piece[1:]
            if right and piece.endswith(" "):
                piece = piece[:-1]
        out.append(piece)
        if k < len(matches):
            out.append(matches[k].group())
            pos = matches[k].end()
    return "".join(out)


class TokenText:
    """Incremental token ids → text, byte-exact, never splitting a character.

    ``token_bytes`` gives one token's bytes (the tokenizer's own table);
    ``skip``: ids that write no text (turn ends, whose text vLLM never shows).
    """

    def __init__(
        self, token_bytes: Callable[[int], bytes], skip: Collection[int] = ()
    ) -> None:
        self._token_bytes = token_bytes
        self._skip = skip
        self._pending = b""

    def feed(self, token_ids: Iterable[int]) -> str:
        data = self._pending + b"".join(
            self._token_bytes(t) for t in token_ids if t not in self._skip
        )
        cut = _complete_prefix(data)
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", "replace")

    def finish(self) -> str:
        data, self._pending = self._pending, b""
        return data.decode("utf-8", "replace")


def _complete_prefix(data: bytes) -> int:
    """Length of the longest prefix that ends on a character boundary."""
    # A UTF-8 character is at most 4 bytes: look at the last 3 for a lead.
    for back in range(1, min(4, len(data) + 1)):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking
            continue
        if byte < 0x80:
            return len(data)
        need = 2 if byte >= 0xC0 and byte < 0xE0 else 3 if byte < 0xF0 else 4
        return len(data) if back >= need else len(data) - back
    return len(data)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (printable chars stand for bytes)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes_fn(tokenizer) -> Callable[[int], bytes]:  # noqa: ANN001
    """One token's bytes for a byte-level tokenizer (Kimi's, GPT-2 style)."""
    decoder = getattr(tokenizer, "byte_decoder", None) or _byte_decoder()
    added = {i for i in tokenizer.get_added_vocab().values()}
    cache: dict[int, bytes] = {}

    def token_bytes(token_id: int) -> bytes:
        data = cache.get(token_id)
        if data is None:
            piece = tokenizer.convert_ids_to_tokens(token_id) or ""
            if token_id in added or not all(c in decoder for c in piece):
                data = piece.encode()
            else:
                data = bytes(decoder[c] for c in piece)
            cache[token_id] = data
        return data

    return token_bytes


def spaces_added(request, tokenizer) -> bool:  # noqa: ANN001
    """Whether vLLM's detokenizer put spaces around added tokens for this
    request: a slow tokenizer with added tokens, and no way (Responses in
    vLLM 0.32) or no wish to turn them off."""
    if getattr(tokenizer, "is_fast", True) or not tokenizer.get_added_vocab():
        return False
    return bool(getattr(request, "spaces_between_special_tokens", True))
