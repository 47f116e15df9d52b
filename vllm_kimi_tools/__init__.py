# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""vLLM plugin: Moonshot-grade tool calling for Kimi K2 models.

Installed, it registers the ``kimi_k2_robust`` tool parser through vLLM's
``vllm.general_plugins`` entry point. Nothing changes for a server until it
is started with ``--tool-call-parser kimi_k2_robust``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vllm-kimi-tools")
except PackageNotFoundError:  # pragma: no cover - source checkout
    __version__ = "0.0.0+unknown"

_REGISTERED = False


def register() -> None:
    """Register the plugin's components with vLLM (idempotent, lazy).

    vLLM calls this in every process; it records a module path only, so the
    parser module is imported when a server actually asks for it.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm.tool_parsers import ToolParserManager

    ToolParserManager.register_lazy_module(
        name="kimi_k2_robust",
        module_path="vllm_kimi_tools.tool_parser",
        class_name="KimiK2RobustToolParser",
    )
    _REGISTERED = True


__all__ = ["__version__", "register"]
