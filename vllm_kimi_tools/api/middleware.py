# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's API contract as an ASGI middleware for ``vllm serve``.

Load it with ``vllm serve ... --tool-call-parser kimi_k2_robust --middleware
vllm_kimi_tools.api.middleware.KimiApiMiddleware``. On a server that does not
serve ``kimi_k2_robust`` it passes everything through unchanged. Otherwise,
for ``POST /v1/chat/completions``:

* the request body goes through :func:`.contract.check_request` first (a 400
  in vLLM's error shape, or the body as vLLM should read it);
* a JSON reply, or each ``data: {...}`` event of a streamed one, gets
  ``reasoning_content`` beside vLLM's ``reasoning``
  (:func:`.contract.add_reasoning_content`).

Only ASGI is used: no vLLM internals.
"""

from __future__ import annotations

import json
from typing import Any

from vllm_kimi_tools.api.contract import add_reasoning_content, check_request
from vllm_kimi_tools.chat import hook

CHAT_PATH = "/v1/chat/completions"


def with_length(headers: list, length: int) -> list:
    """ASGI ``headers`` with ``content-length`` set to ``length``."""
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


async def read_body(receive: Any) -> bytes:
    """The whole request body from an ASGI ``receive``."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


def replaying(raw: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``raw`` as the body, then defers to
    ``receive`` (for the disconnect)."""
    delivered = False

    async def replay() -> dict:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay


def _event(line: bytes) -> bytes:
    """One SSE line with ``reasoning_content`` added where it belongs."""
    if not line.startswith(b"data:"):
        return line
    data = line[5:].strip()
    if not data.startswith(b"{"):
        return line
    try:
        chunk = json.loads(data)
    except ValueError:
        return line
    if not isinstance(chunk, dict) or not add_reasoning_content(chunk):
        return line
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode()


class KimiApiMiddleware:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or scope.get("path") != CHAT_PATH
            or not hook.served()
        ):
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # vLLM answers malformed JSON itself
        if isinstance(body, dict):
            refusal = check_request(body)
            if refusal is not None:
                await _send_json(send, 400, refusal.body())
                return
            raw = json.dumps(body, ensure_ascii=False).encode()
        scope = {**scope, "headers": with_length(scope.get("headers") or [], len(raw))}
        await self.app(scope, replaying(raw, receive), _ReplySender(send))


async def _send_json(send: Any, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})


class _ReplySender:
    """Adds ``reasoning_content`` to a reply on its way out.

    A JSON reply is held until complete (its length changes); an event
    stream is rewritten line by line as it flows, a partial line kept until
    its end arrives.
    """

    def __init__(self, send: Any) -> None:
        self.send = send
        self.start: dict | None = None
        self.kind = ""  # "json" | "stream" | "" (passed through)
        self.held = b""

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            ctype = headers.get(b"content-type", b"")
            if message.get("status") == 200 and ctype.startswith(b"application/json"):
                self.kind, self.start = "json", message
                return
            if ctype.startswith(b"text/event-stream"):
                self.kind = "stream"
            await self.send(message)
            return
        if message["type"] != "http.response.body" or not self.kind:
            await self.send(message)
            return
        more = message.get("more_body", False)
        self.held += message.get("body", b"")
        if self.kind == "json":
            if more:
                return
            await self._send_json_reply()
            return
        *lines, rest = self.held.split(b"\n")
        if more:
            self.held = rest
            if not lines:
                return
            out = b"\n".join(map(_event, lines)) + b"\n"
        else:
            self.held = b""
            out = b"\n".join(map(_event, [*lines, rest]))
        await self.send({**message, "body": out})

    async def _send_json_reply(self) -> None:
        body = self.held
        try:
            reply = json.loads(body)
            if isinstance(reply, dict) and add_reasoning_content(reply):
                body = json.dumps(reply, ensure_ascii=False).encode()
        except ValueError:
            pass
        assert self.start is not None
        start = {**self.start, "headers": with_length(self.start["headers"], len(body))}
        await self.send(start)
        await self.send(
            {"type": "http.response.body", "body": body, "more_body": False}
        )
