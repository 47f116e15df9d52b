# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Kimi K2 special tokens: the one place their text and ids are written down.

A Kimi K2 assistant turn with tool calls looks like this on the wire (ids in
brackets are the real ids in Kimi's 163,840-token vocabulary)::

    [text]<|tool_calls_section_begin|>               (163595)
    <|tool_call_begin|>functions.NAME:IDX             (163597)
    <|tool_call_argument_begin|>{"json": "args"}      (163598)
    <|tool_call_end|>                                 (163599)
    ...more calls...
    <|tool_calls_section_end|><|im_end|>              (163596, 163586)

The five tool markers are *not* flagged special in Kimi's tokenizer, so they
survive ``skip_special_tokens=True``; the chat markers are.
"""

from __future__ import annotations

from collections.abc import Mapping

TOOL_CALLS_SECTION_BEGIN = "<|tool_calls_section_begin|>"
TOOL_CALLS_SECTION_END = "<|tool_calls_section_end|>"
TOOL_CALL_BEGIN = "<|tool_call_begin|>"
TOOL_CALL_ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
TOOL_CALL_END = "<|tool_call_end|>"
# Singular spelling seen in the wild (vLLM's own tests, llama.cpp, tinker).
TOOL_CALL_SECTION_BEGIN_ALT = "<|tool_call_section_begin|>"
TOOL_CALL_SECTION_END_ALT = "<|tool_call_section_end|>"

THINK_BEGIN = "<think>"
THINK_END = "</think>"

IM_END = "<|im_end|>"
IM_USER = "<|im_user|>"
IM_ASSISTANT = "<|im_assistant|>"
IM_SYSTEM = "<|im_system|>"
IM_MIDDLE = "<|im_middle|>"

# Generation prompt appended after the last message (K2, K2-Thinking).
GENERATION_PROMPT = f"{IM_ASSISTANT}assistant{IM_MIDDLE}"
# K2.5 / K2.6 / K2.7 open the turn's thinking in the prompt itself:
# thinking on (the default) and off (``chat_template_kwargs: {"thinking":
# false}``). The output then starts inside thinking, or after it.
GENERATION_PROMPT_THINKING = GENERATION_PROMPT + THINK_BEGIN
GENERATION_PROMPT_NO_THINKING = GENERATION_PROMPT + THINK_BEGIN + THINK_END
# Every form a generation prompt takes, longest first.
GENERATION_PROMPTS = (
    GENERATION_PROMPT_NO_THINKING,
    GENERATION_PROMPT_THINKING,
    GENERATION_PROMPT,
)

# Canonical tool-call id: ``functions.NAME:IDX``, IDX counting every tool call
# of the conversation (history included).
TOOL_CALL_ID_PREFIX = "functions."

VOCAB_SIZE = 163_840
NUM_BASE_TOKENS = 163_584
# Every id from NUM_BASE_TOKENS up is a tiktoken special in Moonshot's
# tokenizer (``tokenization_kimi.py`` reserves 256), named
# ``<|reserved_token_N|>`` unless listed below. Hugging Face's
# ``get_added_vocab()`` lists only the 23 named ones, so code that needs
# "every special" must use this range, not the added vocabulary.
SPECIAL_ID_RANGE = range(NUM_BASE_TOKENS, VOCAB_SIZE)
RESERVED_TOKEN_FORMAT = "<|reserved_token_{}|>"

# Real ids from Kimi K2 / K2.5 tokenizer_config.json ``added_tokens_decoder``.
SPECIAL_TOKEN_IDS: Mapping[str, int] = {
    "[BOS]": 163584,
    "[EOS]": 163585,
    IM_END: 163586,
    IM_USER: 163587,
    IM_ASSISTANT: 163588,
    "<|start_header_id|>": 163590,
    "<|end_header_id|>": 163591,
    "[EOT]": 163593,
    IM_SYSTEM: 163594,
    TOOL_CALLS_SECTION_BEGIN: 163595,
    TOOL_CALLS_SECTION_END: 163596,
    TOOL_CALL_BEGIN: 163597,
    TOOL_CALL_ARGUMENT_BEGIN: 163598,
    TOOL_CALL_END: 163599,
    IM_MIDDLE: 163601,
    "<|media_begin|>": 163602,
    "<|media_content|>": 163603,
    "<|media_end|>": 163604,
    "<|media_pad|>": 163605,
    THINK_BEGIN: 163606,
    THINK_END: 163607,
    "[UNK]": 163838,
    "[PAD]": 163839,
}

# Tokens flagged ``special: false`` in Kimi's tokenizer config.
NON_SPECIAL_TOKENS = frozenset(
    {
        TOOL_CALLS_SECTION_BEGIN,
        TOOL_CALLS_SECTION_END,
        TOOL_CALL_BEGIN,
        TOOL_CALL_ARGUMENT_BEGIN,
        TOOL_CALL_END,
        THINK_BEGIN,
        THINK_END,
    }
)

# The markers a tool parser needs in the tokenizer's vocabulary.
REQUIRED_TOOL_TOKENS = (
    TOOL_CALLS_SECTION_BEGIN,
    TOOL_CALLS_SECTION_END,
    TOOL_CALL_BEGIN,
    TOOL_CALL_ARGUMENT_BEGIN,
    TOOL_CALL_END,
)

# Chat-structure tokens that never belong in user-visible content.
CHAT_CONTROL_TOKENS = (
    IM_END,
    IM_USER,
    IM_ASSISTANT,
    IM_SYSTEM,
    IM_MIDDLE,
    "<|media_begin|>",
    "<|media_content|>",
    "<|media_end|>",
    "<|media_pad|>",
)

EOS_TOKEN_ID = SPECIAL_TOKEN_IDS[IM_END]

# Kimi K3 writes tool calls in XTML over these tokens instead; vLLM serves it
# with its own ``kimi_k3`` renderer and parsers.
K3_MARKERS = ("<|open|>", "<|close|>", "<|sep|>")
K3_PARSER_NAME = "kimi_k3"


def missing_tool_tokens(vocab: Mapping[str, int]) -> list[str]:
    """Return the tool markers absent from ``vocab`` (empty when usable)."""
    return [tok for tok in REQUIRED_TOOL_TOKENS if tok not in vocab]


def is_k3_vocab(vocab: Mapping[str, int]) -> bool:
    """True for a Kimi K3 vocabulary (XTML tool calls, not this format)."""
    return all(tok in vocab for tok in K3_MARKERS)


def vocab_problem(vocab: Mapping[str, int], parser_name: str) -> str | None:
    """Why ``parser_name`` (this package's Kimi K2 parser) cannot serve a
    tokenizer with ``vocab``; None when it can."""
    if is_k3_vocab(vocab):
        return (
            f"{parser_name} serves the Kimi K2 / K2.5 tool-call format; this "
            "tokenizer is Kimi K3's (XTML markers), which it would never "
            f"parse. Use --tool-call-parser {K3_PARSER_NAME} "
            f"--reasoning-parser {K3_PARSER_NAME} instead."
        )
    missing = missing_tool_tokens(vocab)
    if missing:
        return (
            f"{parser_name} needs the Kimi K2 tool-call tokens in the "
            f"tokenizer vocabulary; missing: {', '.join(missing)}"
        )
    return None


def special_token_text(token_id: int) -> str:
    """The text of a special id (named, or ``<|reserved_token_N|>``)."""
    for text, known in SPECIAL_TOKEN_IDS.items():
        if known == token_id:
            return text
    return RESERVED_TOKEN_FORMAT.format(token_id)
