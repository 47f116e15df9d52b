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

# The ``--tool-call-parser`` / ``--reasoning-parser`` name: a public API.
PARSER_NAME = "kimi_k2_robust"
# What the ``hf`` renderer registry entry points to once the hook is in.
HOOK_RENDERER = ("vllm_kimi_tools.renderer", "KimiAwareHfRenderer")

_REGISTERED = False


def register() -> None:
    """Register the plugin's components with vLLM (idempotent, lazy).

    vLLM calls this in every process; it records a module path only, so the
    parser module is imported when a server actually asks for it.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm_kimi_tools import _compat

    _compat.ToolParserManager.register_lazy_module(
        name=PARSER_NAME,
        module_path="vllm_kimi_tools.tool_parser",
        class_name="KimiK2RobustToolParser",
    )
    _compat.ReasoningParserManager.register_lazy_module(
        name=PARSER_NAME,
        module_path="vllm_kimi_tools.reasoning_parser",
        class_name="KimiK2RobustReasoningParser",
    )
    # The chat-template hook replaces vLLM's ``hf`` renderer with a subclass
    # that is a no-op unless kimi_k2_robust is the server's parser. If vLLM's
    # renderer moved, it is not installed and kimi_k2_robust refuses to
    # start (see tool_parser.py); other servers are unaffected.
    reason = _compat.hf_renderer_hookable()
    if reason is None:
        _compat.install_hf_renderer(*HOOK_RENDERER)
    else:
        _HOOK_PROBLEM.append(reason)
    _REGISTERED = True


# Why the renderer hook could not be installed (empty when it is).
_HOOK_PROBLEM: list[str] = []


__all__ = ["PARSER_NAME", "__version__", "register"]
