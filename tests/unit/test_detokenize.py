# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Exact text from Moonshot's slow tokenizer, against vLLM's own detokenizer.

vLLM's slow incremental detokenizer (``spaces_between_special_tokens``
on, as on every Responses request in vLLM 0.32) is run token by token on
random Kimi outputs; :func:`unspace` must give back exactly what the model
wrote, and :class:`TokenText` must decode the ids to the same text.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_kimi_tools.parser.detokenize import (
    TokenText,
    added_token_pattern,
    token_bytes_fn,
    unspace,
)

pytest.importorskip("vllm")

PIECES = [
    "好的。",
    " Let me think.",
    '{"city": "Tokyo"}',
    "functions.get_weather:0",
    " ",
    "  ",
    "\n",
    "a b ",
    "😀x",
    "<think>",  # written with ordinary tokens: no boundary spaces
]
PROMPT = (
    "<|im_user|>user<|im_middle|>hi<|im_end|>"
    "<|im_assistant|>assistant<|im_middle|><think>"
)


def _vllm_text(tok: Any, prompt: list[int], output: list[int]) -> str:
    """What vLLM's slow detokenizer returns for ``output`` (spaces on)."""
    from vllm.tokenizers.detokenizer_utils import (
        convert_prompt_ids_to_tokens,
        detokenize_incrementally,
    )

    ids = list(prompt)
    tokens, prefix, read = convert_prompt_ids_to_tokens(
        tok, prompt, skip_special_tokens=False
    )
    text = ""
    for token in output:
        ids.append(token)
        new, delta, prefix, read = detokenize_incrementally(
            tok, ids, tokens, prefix, read, False, True
        )
        tokens.extend(new)
        text += delta
    return text


@pytest.fixture(scope="module")
def tools(real_kimi_tokenizer: Any) -> dict[str, Any]:
    tok = real_kimi_tokenizer
    return {
        "tok": tok,
        "prompt": tok.encode(PROMPT),
        "added": sorted(tok.get_added_vocab().values()),
        "pattern": added_token_pattern(tok.get_added_vocab()),
        "bytes": token_bytes_fn(tok),
        "pieces": [tok.encode(p) for p in PIECES],
    }


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_unspace_inverts_vllms_slow_detokenizer(tools, data) -> None:
    parts = data.draw(
        st.lists(
            st.one_of(
                st.sampled_from(tools["added"]).map(lambda i: [i]),
                st.sampled_from(tools["pieces"]),
            ),
            min_size=1,
            max_size=12,
        )
    )
    output = [t for part in parts for t in part]
    exact = tools["tok"].decode(output)
    spaced = _vllm_text(tools["tok"], tools["prompt"], output)
    assert unspace(spaced, tools["pattern"]) == exact


def test_spaces_are_really_added(tools) -> None:
    """Without the fix, every marker gains spaces (the test above can fail)."""
    tok = tools["tok"]
    output = tok.encode(
        "好的。<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0",
        allow_special_tokens=True,
    )
    spaced = _vllm_text(tok, tools["prompt"], output)
    assert (
        spaced
        == " 好的。 <|tool_calls_section_begin|> <|tool_call_begin|> functions.f:0"
    )
    assert unspace(spaced, tools["pattern"]) == tok.decode(output)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_token_text_is_exact_for_every_split(tools, data) -> None:
    tok = tools["tok"]
    text = data.draw(st.sampled_from(["😀 héllo 世界 ", '{"k": "€"}', "a\nb"]))
    output = tok.encode(text * 3)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(output)), max_size=6)))
    decoder = TokenText(tools["bytes"])
    pieces, start = [], 0
    for cut in [*cuts, len(output)]:
        piece = decoder.feed(output[start:cut])
        assert "\ufffd" not in piece  # never half a character
        pieces.append(piece)
        start = cut
    assert "".join(pieces) + decoder.finish() == text * 3


def test_token_text_flushes_an_incomplete_character() -> None:
    table = {0: "é".encode()[:1], 1: b"x"}
    decoder = TokenText(table.__getitem__)
    assert decoder.feed([1, 0]) == "x"
    assert decoder.finish() == "\ufffd"


def test_token_text_writes_nothing_for_skipped_ids() -> None:
    table = {0: b"ok", 1: b"<|im_end|>"}
    decoder = TokenText(table.__getitem__, skip={1})
    assert decoder.feed([0, 1, 0]) == "okok"
    assert decoder.finish() == ""
