# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Every ``KIMI_TOOLS_*`` setting, read in one place (as vLLM's envs).

Read a setting as an attribute, ``envs.KIMI_TOOLS_ENFORCER``: it is parsed
from the environment on every read, so a test (or ``render``) may change it
at run time. A value that does not parse is a ``ValueError`` that names the
variable; :func:`validate` raises it at start-up (the tool parser and the
Enforcer call it when vLLM builds them), never mid-request.

=====================================  =======  ==============================
variable                               default  meaning
=====================================  =======  ==============================
``KIMI_TOOLS_ENFORCER``                on       constrained decoding
``KIMI_TOOLS_STREAM_ARGUMENTS``        on       stream call arguments as they
                                                are written
``KIMI_TOOLS_NORMALIZE``               on       the chat-template hook
``KIMI_TOOLS_GRAMMAR_CACHE_MB``        512      compiled grammars kept
``KIMI_TOOLS_COMPILE_WAIT_S``          5        longest wait for one grammar,
                                                per request
``KIMI_TOOLS_BLOCKED_SAMPLE``          32       blocked-token tally on one
                                                enforced row in N (0: off)
``KIMI_TOOLS_LOG_INTERVAL``            10       seconds between the Enforcer's
                                                log lines
``KIMI_TOOLS_VOCAB_TABLES``            auto     when the engine builds the
                                                Enforcer's vocabulary tables:
                                                ``eager`` (at start-up),
                                                ``lazy`` (for the first
                                                enforced request), ``auto``
                                                (eager where the command line
                                                selects ``kimi_k2_robust``)
``KIMI_TOOLS_SPECULATIVE_TAG``         off      where speculative decoding
                                                keeps the Enforcer out: the
                                                plugin's structural tag for
                                                vLLM's structured outputs
                                                instead of xgrammar's builtin
                                                ``kimi`` one
                                                (docs/speculative.md)
=====================================  =======  ==============================

Switches take ``1/true/on/yes`` or ``0/false/off/no`` (any case). The names
carry no ``VLLM_`` prefix: vLLM warns about (or, strict, refuses) every
``VLLM_*`` variable it does not know. The former ``VLLM_KIMI_TOOLS_*`` names
are still read, with a warning, until 0.2.

``KIMI_TOOLS_METRICS_DIR`` is not a setting: the API server sets it for its
engine processes (where the Enforcer writes its counters, see
:mod:`.metrics`); leave it unset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    KIMI_TOOLS_ENFORCER: bool = True
    KIMI_TOOLS_STREAM_ARGUMENTS: bool = True
    KIMI_TOOLS_NORMALIZE: bool = True
    KIMI_TOOLS_GRAMMAR_CACHE_MB: int = 512
    KIMI_TOOLS_COMPILE_WAIT_S: float = 5.0
    KIMI_TOOLS_BLOCKED_SAMPLE: int = 32
    KIMI_TOOLS_LOG_INTERVAL: float = 10.0
    KIMI_TOOLS_VOCAB_TABLES: str = "auto"
    KIMI_TOOLS_SPECULATIVE_TAG: bool = False

logger = logging.getLogger(f"vllm.{__name__}")

_ON = ("1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")
# The names before 0.1: read when the new one is not set.
FORMER_PREFIX = "VLLM_"
_warned: set[str] = set()


def parse_switch(value: Any) -> bool | None:
    """A switch's value: True, False, or None when it is not one.

    Also reads a request's ``kimi_tools_enforce`` xarg, which may be a JSON
    boolean or number as well as a string.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _ON:
            return True
        if word in _OFF:
            return False
    return None


def _raw(name: str) -> tuple[str, str | None]:
    """The variable that is set (the new name first) and its value."""
    value = os.environ.get(name)
    if value is not None and value.strip():
        return name, value
    former = FORMER_PREFIX + name
    value = os.environ.get(former)
    if value is not None and value.strip():
        if former not in _warned:
            _warned.add(former)
            logger.warning("%s is deprecated (read until 0.2); set %s", former, name)
        return former, value
    return name, None


def _switch(name: str, default: bool) -> Callable[[], bool]:
    def read() -> bool:
        source, raw = _raw(name)
        if raw is None:
            return default
        value = parse_switch(raw)
        if value is None:
            raise ValueError(
                f"{source}={raw!r}: expected one of {'/'.join(_ON + _OFF)}"
            )
        return value

    return read


def _number(name: str, kind: type, default: Any, minimum: float) -> Callable[[], Any]:
    def read() -> Any:
        source, raw = _raw(name)
        if raw is None:
            return default
        try:
            value = kind(raw.strip())
        except ValueError:
            value = None
        if value is None or value < minimum or value != value:  # NaN
            raise ValueError(
                f"{source}={raw!r}: expected a {kind.__name__} >= {minimum}"
            )
        return value

    return read


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[], str]:
    def read() -> str:
        source, raw = _raw(name)
        if raw is None:
            return choices[0]
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"{source}={raw!r}: expected one of {'/'.join(choices)}")
        return value

    return read


environment_variables: dict[str, Callable[[], Any]] = {
    "KIMI_TOOLS_ENFORCER": _switch("KIMI_TOOLS_ENFORCER", True),
    "KIMI_TOOLS_STREAM_ARGUMENTS": _switch("KIMI_TOOLS_STREAM_ARGUMENTS", True),
    "KIMI_TOOLS_NORMALIZE": _switch("KIMI_TOOLS_NORMALIZE", True),
    "KIMI_TOOLS_GRAMMAR_CACHE_MB": _number("KIMI_TOOLS_GRAMMAR_CACHE_MB", int, 512, 0),
    "KIMI_TOOLS_COMPILE_WAIT_S": _number("KIMI_TOOLS_COMPILE_WAIT_S", float, 5.0, 0),
    "KIMI_TOOLS_BLOCKED_SAMPLE": _number("KIMI_TOOLS_BLOCKED_SAMPLE", int, 32, 0),
    "KIMI_TOOLS_LOG_INTERVAL": _number("KIMI_TOOLS_LOG_INTERVAL", float, 10.0, 0),
    "KIMI_TOOLS_VOCAB_TABLES": _choice(
        "KIMI_TOOLS_VOCAB_TABLES", ("auto", "eager", "lazy")
    ),
    "KIMI_TOOLS_SPECULATIVE_TAG": _switch("KIMI_TOOLS_SPECULATIVE_TAG", False),
}


def __getattr__(name: str) -> Any:
    if name in environment_variables:
        return environment_variables[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(environment_variables)


def validate() -> None:
    """Raise ``ValueError`` for the first setting that does not parse."""
    for read in environment_variables.values():
        read()
