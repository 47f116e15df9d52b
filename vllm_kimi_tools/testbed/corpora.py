# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Real schema corpora for tests and benchmarks (read from local files only).

* walle: Moonshot's JSON-Schema validator suite (``../shared/anchors/walle``),
  one schema per line of ``validator_cases/*/valid.jsonl``;
* BFCL: function definitions shipped in the ``bfcl-eval`` wheel's data.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def walle_schemas(walle_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((walle_dir / "validator_cases").glob("*/valid.jsonl")):
        for n, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                out.append((f"{path.parent.name}[{n}]", json.loads(line)))
    return out


def bfcl_data_dir() -> Path:
    import bfcl_eval

    return Path(os.path.dirname(bfcl_eval.__file__)) / "data"


def bfcl_functions(limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Function definitions (``name``, ``parameters``) from BFCL's test files."""
    count = 0
    for name in sorted(glob.glob(str(bfcl_data_dir() / "BFCL_v4_*.json"))):
        with open(name) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                functions = entry.get("function")
                if not isinstance(functions, list):
                    continue
                for fn in functions:
                    yield fn
                    count += 1
                    if limit is not None and count >= limit:
                        return
