# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""vLLM plugin: Moonshot-grade tool calling for Kimi K2 models.

Installed, it registers the ``kimi_k2_robust`` tool and reasoning parsers
and the chat-template hook through vLLM's ``vllm.general_plugins`` entry point.
Nothing changes for a server until it is started with
``--tool-call-parser kimi_k2_robust``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vllm-kimi-tools")
except PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0.0.0+unknown"

from vllm_kimi_tools.names import PARSER_NAME

_REGISTERED = False


def register() -> None:
    """Register the plugin's components with vLLM (idempotent).

    vLLM calls this in every process. It records module paths only (the
    parsers are imported when a server asks for ``kimi_k2_robust``) and
    points vLLM's ``hf`` renderer at the chat-template hook, which renders
    as stock vLLM unless that parser is loaded (:mod:`.chat.hook`). Doing so
    imports vLLM's parser managers and renderer registry through
    :mod:`._compat`, which a vLLM process has mostly imported already.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm_kimi_tools import _compat
    from vllm_kimi_tools.chat import hook

    _compat.ToolParserManager.register_lazy_module(
        name=PARSER_NAME,
        module_path="vllm_kimi_tools.parser.tool_parser",
        class_name="KimiK2RobustToolParser",
    )
    _compat.ReasoningParserManager.register_lazy_module(
        name=PARSER_NAME,
        module_path="vllm_kimi_tools.parser.reasoning_parser",
        class_name="KimiK2RobustReasoningParser",
    )
    # If vLLM's renderer registry moved, the hook is not installed and
    # kimi_k2_robust refuses to start (hook.require); other servers are
    # unaffected.
    hook.install()
    _REGISTERED = True


__all__ = ["PARSER_NAME", "__version__", "register"]
