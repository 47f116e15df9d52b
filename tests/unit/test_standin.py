# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The verifier's model stand-in: its intentions, its minimal instances and
the puppet's sense of where a JSON string is."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from kimi_testbed import standin
from kimi_testbed.puppet import _Row
from tests.enforcer_kit import WALLE_DIR, walle_schemas

pytest.importorskip("xgrammar")

TOOL = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 3}},
            "required": ["n"],
        },
    },
}


def test_lazy_means_empty_arguments_cooperative_a_valid_instance() -> None:
    body = {"messages": [], "tools": [TOOL], "tool_choice": "required"}
    lazy = standin.intention(body, standin.LAZY)
    assert lazy == (
        "Reasoning.</think><|tool_calls_section_begin|><|tool_call_begin|>"
        "functions.f:0<|tool_call_argument_begin|>{}<|tool_call_end|>"
        "<|tool_calls_section_end|><|im_end|>"
    )
    off = {**body, "chat_template_kwargs": {"thinking": False}}
    cooperative = standin.intention(off, standin.COOPERATIVE)
    args = cooperative.split("<|tool_call_argument_begin|>")[1].split("<|")[0]
    assert not cooperative.startswith("Reasoning") and json.loads(args)["n"] >= 3


def test_what_it_writes_without_a_call() -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": TOOL["function"]["parameters"]},
    }
    body = {
        "messages": [],
        "response_format": fmt,
        "chat_template_kwargs": {"thinking": False},
    }
    assert standin.intention(body, standin.LAZY) == "{}<|im_end|>"
    text = standin.intention(body, standin.COOPERATIVE).removesuffix("<|im_end|>")
    assert json.loads(text)["n"] >= 3
    none = {"messages": [], "tools": [TOOL], "tool_choice": "none"}
    assert standin.intention(none, standin.LAZY) == "Reasoning.</think>OK<|im_end|>"
    named = {
        "tools": [TOOL, {"function": {"name": "g"}}],
        "tool_choice": {"function": {"name": "g"}},
    }
    assert "functions.g:0" in standin.intention(named, standin.LAZY)


@pytest.mark.skipif(not WALLE_DIR.is_dir(), reason="needs ../shared (walle)")
def test_minimal_instances_of_the_walle_schemas_are_valid() -> None:
    found = 0
    schemas = walle_schemas()
    for name, schema in schemas:
        text = standin.minimal_instance(schema)
        if text is None:
            continue
        found += 1
        assert Draft202012Validator(schema).is_valid(json.loads(text)), name
    # xgrammar cannot compile a few (e.g. patterns it does not support).
    assert found >= 0.9 * len(schemas), (found, len(schemas))


def test_the_puppet_knows_when_it_is_inside_a_string() -> None:
    texts = {1: '{"a', 2: '\\"', 3: 'b"', 4: ":", 163590: ""}
    row = _Row([], "intend", [], [], quote=7)
    for token, inside in [(1, True), (2, True), (3, False), (1, True), (163590, False)]:
        row.output.append(token)
        row.lex(texts.__getitem__)
        assert row.in_string is inside, (row.output, row.in_string)
