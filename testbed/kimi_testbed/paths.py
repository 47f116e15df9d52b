# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Where the test bed keeps what it builds: ``$KIMI_TOOLS_CACHE`` (formerly
``$VLLM_KIMI_TOOLS_CACHE``), else
``$XDG_CACHE_HOME/vllm-kimi-tools`` (``~/.cache/vllm-kimi-tools``)::

    <cache>/tinykimi/          the tiny Kimi-format model (K2 template)
    <cache>/tinykimi-k25/      the same weights with the K2.5 template
    <cache>/logs/              vllm serve logs of tests, demo and benchmarks
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "KIMI_TOOLS_CACHE"


def setting(name: str) -> str | None:
    """A test-bed variable, or its former ``VLLM_``-prefixed name."""
    return os.environ.get(name) or os.environ.get(f"VLLM_{name}") or None


def cache_dir() -> Path:
    env = setting(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vllm-kimi-tools"
