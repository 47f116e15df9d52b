# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Write a benchmark's result as ``NAME.json`` plus its ``NAME.md`` table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(out: Path | None, name: str, result: Any, markdown: str) -> None:
    """Print the table; with ``--out DIR``, also write both files there."""
    print(markdown)
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown)
