# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Build a tiny random-weight model that speaks Kimi's format, offline.

The tokenizer is **Moonshot's real one** whenever its files are at hand
(``tiktoken.model`` plus the ``tokenization_kimi.py`` remote code, found
through ``$KIMI_TOOLS_KIMI_TOKENIZER`` or ``../shared`` beside the
checkout): they are copied into the model directory and loaded with
``trust_remote_code`` exactly as ``vllm serve --trust-remote-code`` loads a
Kimi checkpoint (a Python "slow" tokenizer). Without them, a synthetic
byte-level BPE tokenizer whose *ids* match Kimi's stands in: 163,584 base
tokens, then Kimi's special tokens at their real ids (``<|im_end|>`` =
163586, ``<|tool_calls_section_begin|>`` = 163595, …, ``</think>`` = 163607),
the rest of 163,584–163,839 as ``<|reserved_token_N|>``. Both have 163,840
ids, so grammar and mask costs measured on either are those of the real
model; :func:`tokenizer_kind` says which one a model directory has.

The model is a 2-layer Llama (head_dim 32, as vLLM's CPU attention requires)
with seeded random weights; the build is byte-for-byte deterministic. The
chat template is one of :data:`TEMPLATES` (``k2``: K2 / K2-Thinking rules;
``k25``: the K2.5–K2.7 rules, thinking opened by the prompt).

Usage::

    python -m kimi_testbed.tinykimi OUT_DIR [--template k25]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kimi_testbed.paths import setting
from vllm_kimi_tools.tokens import (
    NON_SPECIAL_TOKENS,
    NUM_BASE_TOKENS,
    SPECIAL_TOKEN_IDS,
    VOCAB_SIZE,
)

BUILD_VERSION = "2"  # bump when the output changes
_HERE = Path(__file__).resolve().parent
# Chat templates written for the test bed (see docs/testbed.md).
TEMPLATES = {
    "k2": _HERE / "chat_template.jinja",
    "k25": _HERE / "templates" / "k25.jinja",
}
# Moonshot's tokenizer files, as a Kimi checkpoint ships them.
REAL_TOKENIZER_FILES = (
    "tiktoken.model",
    "tokenization_kimi.py",
    "tool_declaration_ts.py",
    "tokenizer_config.json",
    "LICENSE",
)
REAL_TOKENIZER_ENV = "KIMI_TOOLS_KIMI_TOKENIZER"
REAL, SYNTHETIC = "real", "synthetic"
_KIND_FILE = ".tinykimi-tokenizer"
_HIDDEN, _HEADS, _LAYERS = 128, 4, 2

_WORDS_TEXT = """
the a of to and in is it you that was for on are with as at be this have from or
by but not what all were we when your can said there use an each which she do
how their if will up other about out many then them these so some her would make
like him into time has look two more write go see way could people my than first
water been call who oil its now find long down day did get come made may part
weather city Tokyo Paris London Berlin search query file path read list send
email unit celsius result return function tool call arguments name value true
false null number string object array
"""
_WORDS = _WORDS_TEXT.split()


def corpus(rng: random.Random) -> list[str]:
    """The text the synthetic tokenizers learn their merges from."""
    lines = []
    for _ in range(800):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        lines.append(" ".join(words).capitalize() + rng.choice(".?!"))
    for i in range(400):
        key = rng.choice(["city", "query", "path", "q", "n", "unit", "to"])
        name = rng.choice(["get_weather", "search", "read_file", "send_email"])
        lines.append(f"functions.{name}:{i % 9}")
        lines.append(json.dumps({key: rng.choice(_WORDS), "n": rng.randint(0, 999)}))
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


def _filler(i: int, rng: random.Random) -> str:
    # Unreachable base tokens (no merge produces them) that pad the vocabulary
    # to Kimi's size with realistic, decodable byte-level strings.
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
    body = "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 9)))
    return ("Ġ" if i % 2 else "") + body + f"{i:x}"


def real_tokenizer_dir() -> Path | None:
    """Moonshot's tokenizer files, if they are at hand (else None)."""
    env = setting(REAL_TOKENIZER_ENV)
    candidates = [Path(env)] if env else []
    repo = _HERE.parent.parent
    candidates.append(repo.parent / "shared" / "anchors" / "kimi" / "tokenizer-k25")
    for path in candidates:
        if all((path / name).is_file() for name in REAL_TOKENIZER_FILES[:4]):
            return path
    return None


def tokenizer_kind(model_dir: str | os.PathLike[str]) -> str:
    """``"real"`` or ``"synthetic"``: which tokenizer a built model has."""
    return (Path(model_dir) / _KIND_FILE).read_text().strip()


def needs_remote_code(model_dir: str | os.PathLike[str]) -> bool:
    """Whether loading the model's tokenizer runs its remote code."""
    return (Path(model_dir) / "tokenization_kimi.py").exists()


def describe(model_dir: str | os.PathLike[str]) -> str:
    """One line saying which tokenizer and template a test-bed model uses."""
    model_dir = Path(model_dir)
    kind = tokenizer_kind(model_dir)
    what = (
        "Moonshot's real tokenizer (tiktoken, remote code)"
        if kind == REAL
        else "synthetic fast tokenizer (Moonshot's files not found)"
    )
    template = (model_dir / ".tinykimi-template").read_text().strip()
    return f"{what}, {template} chat template"


def copy_real_tokenizer(source: Path, out: Path, template: Path) -> None:
    for name in REAL_TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    (out / "chat_template.jinja").write_text(template.read_text())


def trained_bpe(vocab_size: int, rng: random.Random) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` learnt from :func:`corpus`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(rng), trainer=trainer)
    return tok


def build_tokenizer(out: Path, template: Path) -> None:
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
    )

    rng = random.Random(0)
    trainer_tok = trained_bpe(6000, rng)
    model_json = json.loads(trainer_tok.to_str())["model"]
    vocab: dict[str, int] = dict(model_json["vocab"])
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" "))
        for m in model_json["merges"]
    ]
    i = len(vocab)
    while len(vocab) < NUM_BASE_TOKENS:
        token = _filler(i, rng)
        if token not in vocab:
            vocab[token] = len(vocab)
        i += 1

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    by_id = {v: k for k, v in SPECIAL_TOKEN_IDS.items()}
    added = []
    for token_id in range(NUM_BASE_TOKENS, VOCAB_SIZE):
        content = by_id.get(token_id, f"<|reserved_token_{token_id}|>")
        special = content not in NON_SPECIAL_TOKENS
        added.append(AddedToken(content, special=special, normalized=False))
    # add_tokens/add_special_tokens assign consecutive ids from len(vocab).
    for token in added:
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    for content, token_id in SPECIAL_TOKEN_IDS.items():
        assert tok.token_to_id(content) == token_id, (content, token_id)
    assert tok.get_vocab_size() == VOCAB_SIZE

    tok.save(str(out / "tokenizer.json"))
    (out / "chat_template.jinja").write_text(template.read_text())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(tid): {
                "content": content,
                "special": content not in NON_SPECIAL_TOKENS,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
            }
            for content, tid in SPECIAL_TOKEN_IDS.items()
        },
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                k: config[k]
                for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            },
            indent=2,
        )
        + "\n"
    )


def build_model(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    assert _HIDDEN // _HEADS >= 32, "vLLM's CPU attention needs head_dim >= 32"
    torch.manual_seed(0)
    eos = SPECIAL_TOKEN_IDS["<|im_end|>"]
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=_HIDDEN,
        intermediate_size=2 * _HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_HEADS,
        head_dim=_HIDDEN // _HEADS,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        bos_token_id=SPECIAL_TOKEN_IDS["[BOS]"],
        eos_token_id=eos,
        pad_token_id=SPECIAL_TOKEN_IDS["[PAD]"],
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": config.bos_token_id,
                "eos_token_id": eos,
                "pad_token_id": config.pad_token_id,
            },
            indent=2,
        )
        + "\n"
    )


def _stamp(template: Path, source: Path | None) -> str:
    digest = hashlib.sha256(BUILD_VERSION.encode())
    digest.update(template.read_bytes())
    if source is not None:
        for name in REAL_TOKENIZER_FILES:
            if (source / name).is_file():
                digest.update((source / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_tinykimi(
    out: str | os.PathLike[str], *, template: str = "k2", tokenizer: str = "auto"
) -> Path:
    """Build the model into ``out`` unless an identical build is already there.

    ``tokenizer``: ``"auto"`` (Moonshot's real tokenizer when its files are at
    hand, else the synthetic one), ``"real"`` (an error without the files) or
    ``"synthetic"``. ``template``: a key of :data:`TEMPLATES`.
    """
    out = Path(out)
    template_path = TEMPLATES[template]
    source = None if tokenizer == SYNTHETIC else real_tokenizer_dir()
    if tokenizer == REAL and source is None:
        raise FileNotFoundError(
            f"Moonshot's tokenizer not found; set {REAL_TOKENIZER_ENV} to its directory"
        )
    stamp_file = out / ".tinykimi-stamp"
    stamp = _stamp(template_path, source)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tinykimi-", dir=out.parent))
    try:
        if source is not None:
            copy_real_tokenizer(source, tmp, template_path)
        else:
            build_tokenizer(tmp, template_path)
        build_model(tmp)
        (tmp / _KIND_FILE).write_text(SYNTHETIC if source is None else REAL)
        (tmp / ".tinykimi-template").write_text(template)
        (tmp / ".tinykimi-stamp").write_text(stamp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory to write the model into")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="k2")
    parser.add_argument(
        "--tokenizer", choices=("auto", REAL, SYNTHETIC), default="auto"
    )
    args = parser.parse_args()
    model = ensure_tinykimi(args.out, template=args.template, tokenizer=args.tokenizer)
    print(model, "-", describe(model))


if __name__ == "__main__":
    main()
