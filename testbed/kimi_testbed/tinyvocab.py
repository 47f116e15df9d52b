# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""A tiny Kimi-format tokenizer, built in memory in about a second, for the
tests of the pure core (xgrammar's tests use tiny vocabularies the same way).

A byte-level BPE of :data:`SIZE` tokens (256 bytes, then merges learnt from
the test bed's corpus of words and tool-call JSON), followed by Kimi's named
special tokens with Kimi's flags: the five tool markers are not special,
the chat markers are::

    0..255   the bytes      256..SIZE-1  merges ("city", '{"', ...)
    SIZE..   [BOS] [EOS] <|im_end|> ... <|tool_calls_section_begin|> ...

The full 163,840-token vocabulary (:mod:`.tinykimi`, Moonshot's real one where
``../shared`` has it) stays for the integration tests.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any

from kimi_testbed.tinykimi import trained_bpe
from vllm_kimi_tools.tokens import NON_SPECIAL_TOKENS, SPECIAL_TOKEN_IDS

SIZE = 768  # base tokens, before the special ones


@functools.cache
def tiny_kimi_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` with Kimi's special tokens (cached)."""
    from tokenizers import AddedToken, decoders
    from transformers import PreTrainedTokenizerFast

    tok = trained_bpe(SIZE, random.Random(0))
    assert len(json.loads(tok.to_str())["model"]["vocab"]) == SIZE
    tok.decoder = decoders.ByteLevel()
    for content in sorted(SPECIAL_TOKEN_IDS, key=SPECIAL_TOKEN_IDS.__getitem__):
        token = AddedToken(content, special=content not in NON_SPECIAL_TOKENS)
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        clean_up_tokenization_spaces=False,
    )
