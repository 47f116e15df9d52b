# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""A model stand-in for clients that send no script (Moonshot's vendor verifier).

The tiny model writes noise; the puppet (``puppet.py``) writes what a request's
``vllm_xargs`` script says. A third-party client sends no script, so this
module writes one for it, server-side, before vLLM reads the request: an ASGI
middleware (``vllm serve --middleware kimi_testbed.standin.StandInMiddleware``)
adds to each ``/v1/chat/completions`` body::

    "vllm_xargs": {"puppet_script": [...], "puppet_mode": "intend",
                   "puppet_closers": [...]}

and the puppet, loaded with ``--logits-processors``, writes it like a model
with that intention: the next scripted token when the masks before it allow
it, else a closer (``}`` ``]`` ``"`` ``<|tool_call_end|>``
``<|tool_calls_section_end|>`` ``<|im_end|>``, in that order), else the
model's own best allowed token; inside a JSON string it tries ``"`` first
(``puppet_quote``). Every configuration gets the same middleware
and the same processor, so what differs between them is the server.

The intention, from the request alone (``KIMI_TESTBED_STANDIN`` picks the
mode):

- with ``tools`` and ``tool_choice`` not ``"none"``: one call to the named
  tool (``tool_choice``) or else the first declared one, written
  ``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
  <|tool_call_argument_begin|>ARGS<|tool_call_end|><|tool_calls_section_end|>``;
- else with a JSON ``response_format``: the JSON text ``ARGS``;
- else the text ``OK``;
- each preceded by ``Reasoning.</think>`` when the prompt opens ``<think>``
  (thinking not switched off in ``chat_template_kwargs``).

``ARGS`` is ``{}`` in **lazy** mode, whatever the schema says: what makes the
arguments valid is then the server's enforcement. In **cooperative** mode it
is a minimal valid instance of the schema (:func:`minimal_instance`), which
separates parsing from enforcement; where none is found it stays ``{}``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from vllm_kimi_tools.api.middleware import read_body, replaying, with_length

LAZY = "lazy"
COOPERATIVE = "cooperative"
MODES = (LAZY, COOPERATIVE)
MODE_ENV = "KIMI_TESTBED_STANDIN"
MODEL_ENV = "KIMI_TESTBED_STANDIN_MODEL"
CHAT_PATH = "/v1/chat/completions"
REASONING = "Reasoning.</think>"
CLOSERS = (
    "}",
    "]",
    '"',
    "<|tool_call_end|>",
    "<|tool_calls_section_end|>",
    "<|im_end|>",
)
# Bytes tried first when a minimal instance is built: closers, then the
# shortest values; inside a string, its end first.
_PREFERRED = b'}]"0123456789aAnft-.e:,{['
_PREFERRED_IN_STRING = b'"aA0'
_MAX_BYTES = 4096


@functools.cache
def _byte_compiler() -> Any:
    import xgrammar as xgr

    vocab = [bytes([b]) for b in range(256)] + [b"</s>"]
    info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, stop_token_ids=[256])
    return xgr.GrammarCompiler(info, cache_enabled=False)


def _walk(compiled: Any, rest: list[int]) -> bytes | None:
    """Bytes the grammar accepts, each the first allowed of the preferred
    ones, then of ``rest``; ``None`` past ``_MAX_BYTES``."""
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, 257)
    orders = {
        False: [*_PREFERRED, *(b for b in rest if b not in _PREFERRED)],
        True: [
            *_PREFERRED_IN_STRING,
            *(b for b in rest if b not in _PREFERRED_IN_STRING),
        ],
    }
    out = bytearray()
    in_string = escaped = False
    while len(out) < _MAX_BYTES:
        matcher.fill_next_token_bitmask(mask)
        words = mask[0].tolist()

        def allowed(token: int, words: list[int] = words) -> bool:
            return bool((words[token // 32] >> (token % 32)) & 1)

        if allowed(256):
            return bytes(out)
        choice = next((b for b in orders[in_string] if allowed(b)), None)
        if choice is None or not matcher.accept_token(choice):
            return None
        out.append(choice)
        if choice == ord('"') and not escaped:
            in_string = not in_string
        escaped = in_string and not escaped and choice == ord("\\")
    return None


@functools.lru_cache(maxsize=256)
def _minimal_instance(schema_json: str) -> str | None:
    from jsonschema import Draft202012Validator

    try:
        compiled = _byte_compiler().compile_json_schema(
            schema_json, any_whitespace=False, separators=(",", ":")
        )
        validator = Draft202012Validator(json.loads(schema_json))
    except Exception:  # noqa: BLE001 - a schema xgrammar cannot compile
        return None
    # Unlisted bytes low to high, then high to low: where the first order
    # walks into an optional recursion (``child`` before ``name``), the
    # second takes the other key.
    for rest in (list(range(256)), list(range(255, -1, -1))):
        out = _walk(compiled, rest)
        if out is None:
            continue
        try:
            text = out.decode()
            if validator.is_valid(json.loads(text)):
                return text
        except ValueError:
            continue
    return None


def minimal_instance(schema: Any) -> str | None:
    """A short JSON text valid under ``schema``, or ``None`` if none is found.

    Built byte by byte by xgrammar's own JSON-schema grammar (not the
    Enforcer's), preferring closers and the shortest values, and checked with
    ``jsonschema`` before it is returned.
    """
    return _minimal_instance(json.dumps(schema))


def _named_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [
        t.get("function")
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == name), tools[0])
    return tools[0]


def _json_format(body: dict[str, Any]) -> Any:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {}
    return None


def _thinks(body: dict[str, Any]) -> bool:
    kwargs = body.get("chat_template_kwargs") or {}
    return kwargs.get("thinking", True) is not False


def intention(body: dict[str, Any], mode: str) -> str:
    """The text the stand-in means to write for a chat request ``body``."""

    def args(schema: Any) -> str:
        if mode == COOPERATIVE:
            return minimal_instance(schema) or "{}"
        return "{}"

    head = REASONING if _thinks(body) else ""
    tool = _named_tool(body)
    if tool is not None:
        return (
            f"{head}<|tool_calls_section_begin|><|tool_call_begin|>"
            f"functions.{tool.get('name')}:0<|tool_call_argument_begin|>"
            f"{args(tool.get('parameters') or {})}"
            "<|tool_call_end|><|tool_calls_section_end|><|im_end|>"
        )
    schema = _json_format(body)
    if schema is not None:
        return f"{head}{args(schema)}<|im_end|>"
    return f"{head}OK<|im_end|>"


@functools.cache
def _tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)


def script(body: dict[str, Any], mode: str, model_dir: str) -> dict[str, Any]:
    """The ``vllm_xargs`` that make the puppet write :func:`intention`."""
    tok = _tokenizer(model_dir)

    def ids(text: str) -> list[int]:
        return list(tok.encode(text, add_special_tokens=False))

    closers = [ids(c) for c in CLOSERS]
    return {
        "puppet_script": ids(intention(body, mode)),
        "puppet_mode": "intend",
        "puppet_closers": [c[0] for c in closers if len(c) == 1],
        "puppet_quote": ids('"')[0],
    }


class StandInMiddleware:
    """ASGI middleware: adds the stand-in's script to chat requests."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.mode = os.environ.get(MODE_ENV, LAZY)
        if self.mode not in MODES:
            raise ValueError(f"{MODE_ENV} must be one of {MODES}, not {self.mode!r}")
        self.model_dir = os.environ[MODEL_ENV]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and "puppet_script" not in (
            body.get("vllm_xargs") or {}
        ):
            extra = dict(body.get("vllm_xargs") or {})
            extra.update(script(body, self.mode, self.model_dir))
            body["vllm_xargs"] = extra
            raw = json.dumps(body).encode()
        scope = {**scope, "headers": with_length(scope["headers"], len(raw))}
        await self.app(scope, replaying(raw, receive), send)
