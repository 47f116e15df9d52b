# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The chat-template hook's state in this process, in one place.

* :func:`install` (from :func:`vllm_kimi_tools.register`, in every vLLM
  process): vLLM's ``hf`` renderer entry now names
  :class:`.renderer.KimiAwareHfRenderer`, unless vLLM's registry is not what
  0.32 ships (:func:`problem` says why; nothing is changed then);
* :func:`serve` (when vLLM loads the ``kimi_k2_robust`` tool parser): this
  process serves Kimi tool calls, so the renderer normalises Kimi chats
  from now on (:func:`normalizing`); :func:`require` is the parser's
  start-up check that the hook is really in.

A server with another parser never calls :func:`serve`: its chats render
exactly as stock vLLM renders them.

* :func:`note_config` (from the renderer, which vLLM builds with the
  server's config): what the engine can do, read once here;
  :func:`enforcer_unavailable` says why the Enforcer cannot run on this
  server (speculative decoding: vLLM loads no logits processor then), and
  :func:`grammar_after_thinking` whether vLLM applies a request's grammar
  only once its reasoning parser saw the thinking end.
"""

from __future__ import annotations

from vllm_kimi_tools import _compat, envs
from vllm_kimi_tools.names import PARSER_NAME

RENDERER = ("vllm_kimi_tools.chat.renderer", "KimiAwareHfRenderer")

_installed = False
_problem: str | None = None
_served = False
# Why the Enforcer cannot run on this server: (metric label, reason).
_unavailable: tuple[str, str] | None = None
_after_thinking = False


def install() -> None:
    """Point vLLM's ``hf`` renderer at the hook (idempotent)."""
    global _installed, _problem
    if _compat.installed_hf_renderer() == RENDERER:
        _installed = True
        return
    _problem = _compat.hf_renderer_hookable()
    if _problem is None:
        _compat.install_hf_renderer(*RENDERER)
        _installed = True


def problem() -> str | None:
    """Why the hook is not installed (None: it is)."""
    if _compat.installed_hf_renderer() == RENDERER:
        return None
    if _problem is not None:
        return _problem
    if not _installed:
        return "vllm_kimi_tools.register() has not run in this process"
    return "vLLM's renderer registry changed since"


def serve() -> None:
    """This process serves ``kimi_k2_robust``: normalise its Kimi chats."""
    global _served
    _served = True


def served() -> bool:
    """Whether this process serves ``kimi_k2_robust``."""
    return _served


def normalizing() -> bool:
    """Whether the renderer normalises Kimi chats in this process now."""
    return _served and envs.KIMI_TOOLS_NORMALIZE


def require() -> None:
    """Raise at start-up when the hook should normalise but is not in."""
    if not envs.KIMI_TOOLS_NORMALIZE:
        return
    reason = problem()
    if reason is not None:
        raise RuntimeError(
            f"{PARSER_NAME}: the chat-template hook is not installed ({reason}). "
            "Use vLLM 0.32.x, or set KIMI_TOOLS_NORMALIZE=0 to serve "
            "without history normalisation."
        )


def note_config(config: object) -> None:
    """Read what the engine can do from the server's ``VllmConfig``."""
    global _unavailable, _after_thinking
    outputs = getattr(config, "structured_outputs_config", None)
    _after_thinking = bool(getattr(outputs, "reasoning_parser", None)) and not (
        getattr(outputs, "enable_in_reasoning", False)
    )
    if getattr(config, "speculative_config", None) is not None:
        _unavailable = (
            "speculative",
            "speculative decoding is on, and vLLM loads no logits processor with it",
        )


def enforcer_unavailable() -> tuple[str, str] | None:
    """Why the Enforcer cannot run on this server, as (metric label,
    reason); None: it can."""
    return _unavailable


def grammar_after_thinking() -> bool:
    """Whether vLLM's structured outputs start after the thinking on this
    server (a ``--reasoning-parser``, without ``enable_in_reasoning``)."""
    return _after_thinking
