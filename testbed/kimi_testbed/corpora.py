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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_kimi_tools.enforcer.schemas import TYPE_ALIASES


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


# BFCL categories whose answers are single-turn calls with Python-typed
# arguments (Java/JavaScript answers are source strings; multi-turn ones are
# executable traces).
BFCL_CALL_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)


@dataclass(frozen=True)
class BfclCase:
    """One BFCL question with the first acceptable answer of its ground truth.

    ``tools`` are Chat Completions tools as an OpenAI-compatible client sends
    them (BFCL's own OpenAI handler does the same): BFCL's ``dict``/``float``/
    ``tuple``... types become JSON Schema types and ``.`` in names becomes
    ``_``. ``calls`` are ``(name, arguments)`` with argument keys in declared
    order; each passes ``jsonschema`` against its tool (cases whose first
    answer does not are left out).
    """

    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    calls: list[tuple[str, dict[str, Any]]]


def openai_name(name: str) -> str:
    return name.replace(".", "_")


def json_schema_from_bfcl(node: Any) -> Any:
    """BFCL's parameter schema as standard JSON Schema."""
    if isinstance(node, list):
        return [json_schema_from_bfcl(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: json_schema_from_bfcl(v) for k, v in node.items()}
    kind = out.get("type")
    if isinstance(kind, str) and kind in TYPE_ALIASES:
        if TYPE_ALIASES[kind] is None:
            del out["type"]
        else:
            out["type"] = TYPE_ALIASES[kind]
    return out


def _first_answer(options: dict[str, list[Any]]) -> dict[str, Any]:
    """BFCL lists acceptable values per key (``""``: may be omitted); nested
    objects list options per key too. Take the first option everywhere."""
    out = {}
    for key, values in options.items():
        if not isinstance(values, list) or not values or values[0] == "":
            continue
        first = values[0]
        out[key] = _first_answer(first) if isinstance(first, dict) else first
    return out


def in_declared_order(value: Any, schema: Any) -> Any:
    """``value`` with object keys in the order ``schema`` declares them."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: in_declared_order(value[k], props.get(k)) for k in keys}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [in_declared_order(v, schema["items"]) for v in value]
    return value


def bfcl_cases(max_tools_chars: int = 6000) -> Iterator[BfclCase]:
    """BFCL's answered single-turn cases, in file order per category."""
    import jsonschema

    data = bfcl_data_dir()
    for category in BFCL_CALL_CATEGORIES:
        questions = {}
        with open(data / f"BFCL_v4_{category}.json") as f:
            for line in f:
                entry = json.loads(line)
                questions[entry["id"]] = entry
        with open(data / "possible_answer" / f"BFCL_v4_{category}.json") as f:
            for line in f:
                answer = json.loads(line)
                question = questions.get(answer["id"])
                if question is None:
                    continue
                schemas = {
                    openai_name(fn["name"]): json_schema_from_bfcl(fn["parameters"])
                    for fn in question["function"]
                }
                tools = [
                    {
                        "type": "function",
                        "function": {
                            "name": openai_name(fn["name"]),
                            "description": fn.get("description", ""),
                            "parameters": schemas[openai_name(fn["name"])],
                        },
                    }
                    for fn in question["function"]
                ]
                if len(json.dumps(tools)) > max_tools_chars:
                    continue
                calls = []
                for entry in answer["ground_truth"]:
                    ((name, options),) = entry.items()
                    name = openai_name(name)
                    schema = schemas.get(name)
                    args = in_declared_order(_first_answer(options), schema)
                    try:
                        jsonschema.validate(args, schema)
                    except (jsonschema.ValidationError, jsonschema.SchemaError):
                        break
                    calls.append((name, args))
                else:
                    yield BfclCase(answer["id"], question["question"][0], tools, calls)
