# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Accept/reject tables per schema feature, and grammar ⊆ schema on suites.

Each row writes one complete call through the Enforcer with the tiny Kimi
tokenizer; a schema-invalid call must be refused at some token, a valid one
accepted to the end.
"""

from __future__ import annotations

import json
import random

import pytest
from jsonschema import Draft202012Validator

from kimi_testbed import wire
from tests.enforcer_kit import (
    allowed,
    bfcl_functions,
    drive,
    enforcer_for,
    random_call,
    walle_schemas,
)
from vllm_kimi_tools import tokens
from vllm_kimi_tools.enforcer.machine import Phase, RequestEnforcer
from vllm_kimi_tools.enforcer.schemas import prepare_schema
from vllm_kimi_tools.enforcer.spec import EnforcerSpec, ToolGrammar

pytest.importorskip("xgrammar")

OBJ = "object"


def call(args: str, name: str = "f", idx: int = 0) -> str:
    """A whole turn: one call in a section, then the end of the turn."""
    return wire.section(wire.call(name, args, idx)) + tokens.IM_END


def props(required=(), extra=None, **properties):
    schema = {"type": OBJ, "properties": properties, "required": list(required)}
    if extra is not None:
        schema["additionalProperties"] = extra
    return schema


S, INT, N, B = ({"type": t} for t in ("string", "integer", "number", "boolean"))

# Stricter than the schema by design (docs/enforcer.md): rows the grammar
# refuses although jsonschema accepts them.
# Marker *tokens* are never allowed inside strings (their text, spelled in
# ordinary tokens, is).
STRICTER = {
    "extra key, absent additionalProperties",
    "format date-time",
    "marker inside a string",
    "section end inside a string",
}

# (feature, schema, arguments, valid per jsonschema)
TABLE = [
    ("required present", props(["a"], a=S), '{"a": "x"}', True),
    ("required missing", props(["a"], a=S, b=INT), '{"b": 1}', False),
    ("declared order kept", props(["z", "a"], z=S, a=S), '{"z": "1", "a": "2"}', True),
    ("optional skipped", props(["b"], a=S, b=INT), '{"b": 1}', True),
    ("wrong type", props(["a"], a=INT), '{"a": "3"}', False),
    ("integer as float", props(["a"], a=INT), '{"a": 3.5}', False),
    ("number", props(["a"], a=N), '{"a": -3.5e2}', True),
    ("boolean", props(["a"], a=B), '{"a": true}', True),
    (
        "extra key, absent additionalProperties",
        props([], a=S),
        '{"a": "x", "z": 1}',
        True,
    ),
    (
        "extra key, additionalProperties true",
        props([], True, a=S),
        '{"a": "x", "z": 1}',
        True,
    ),
    ("extra key, additionalProperties false", props([], False, a=S), '{"z": 1}', False),
    ("extra key typed", props([], INT, a=S), '{"a": "x", "z": "no"}', False),
    ("enum hit", props(["u"], u={"enum": ["c", "f"]}), '{"u": "c"}', True),
    ("enum miss", props(["u"], u={"enum": ["c", "f"]}), '{"u": "k"}', False),
    ("const", props(["u"], u={"const": 7}), '{"u": 8}', False),
    ("minimum", props(["n"], n={"type": "integer", "minimum": 1}), '{"n": 0}', False),
    (
        "maximum ok",
        props(["n"], n={"type": "integer", "maximum": 14}),
        '{"n": 14}',
        True,
    ),
    ("maximum", props(["n"], n={"type": "integer", "maximum": 14}), '{"n": 15}', False),
    (
        "maxItems",
        props(["l"], l={"type": "array", "items": INT, "maxItems": 2}),
        '{"l": [1, 2, 3]}',
        False,
    ),
    (
        "minItems",
        props(["l"], l={"type": "array", "items": INT, "minItems": 1}),
        '{"l": []}',
        False,
    ),
    (
        "items type",
        props(["l"], l={"type": "array", "items": INT}),
        '{"l": [1, "x"]}',
        False,
    ),
    ("nested required", props(["o"], o=props(["k"], k=S)), '{"o": {}}', False),
    ("nested ok", props(["o"], o=props(["k"], k=S)), '{"o": {"k": "v"}}', True),
    ("anyOf", props(["v"], v={"anyOf": [S, INT]}), '{"v": 3}', True),
    ("anyOf miss", props(["v"], v={"anyOf": [S, INT]}), '{"v": true}', False),
    ("null union", props(["v"], v={"type": ["string", "null"]}), '{"v": null}', True),
    (
        "$ref",
        {**props(["p"], p={"$ref": "#/$defs/P"}), "$defs": {"P": props(["x"], x=INT)}},
        '{"p": {"x": "s"}}',
        False,
    ),
    (
        "maxLength ok",
        props(["s"], s={"type": "string", "maxLength": 5}),
        '{"s": "Paris"}',
        True,
    ),
    (
        "maxLength",
        props(["s"], s={"type": "string", "maxLength": 5}),
        '{"s": "Londres"}',
        False,
    ),
    (
        "minLength",
        props(["s"], s={"type": "string", "minLength": 3}),
        '{"s": "ab"}',
        False,
    ),
    (
        "minLength ok",
        props(["s"], s={"type": "string", "minLength": 3}),
        '{"s": "abc"}',
        True,
    ),
    (
        "huge maxLength",
        props(["s"], s={"type": "string", "maxLength": 5000000}),
        '{"s": "abc"}',
        True,
    ),
    (
        "length in array items",
        props(["l"], l={"type": "array", "items": {"type": "string", "maxLength": 2}}),
        '{"l": ["ab", "abc"]}',
        False,
    ),
    (
        "pattern",
        props(["s"], s={"type": "string", "pattern": "^[a-z]+$"}),
        '{"s": "aB"}',
        False,
    ),
    (
        "format date-time",
        props(["t"], t={"type": "string", "format": "date-time"}),
        '{"t": "yesterday"}',
        True,
    ),
    (
        "marker inside a string",
        props(["s"], s=S),
        '{"s": "a<|tool_call_end|>b"}',
        True,
    ),
    (
        "section end inside a string",
        props(["s"], s=S),
        '{"s": "<|tool_calls_section_end|>"}',
        True,
    ),
    ("escaped quote", props(["s"], s=S), '{"s": "say \\"hi\\""}', True),
    ("empty object tool", {"type": OBJ, "properties": {}}, "{}", True),
    ("any object", {"type": OBJ}, '{"k": [1, {"x": null}]}', True),
    ("not an object", props([], a=S), '["a"]', False),
    ("trailing garbage", props([], a=S), '{"a": "x"} x', False),
]


@pytest.mark.parametrize(
    ("feature", "schema", "args", "valid"), TABLE, ids=[row[0] for row in TABLE]
)
def test_accept_reject_table(tiny_store, tiny_tokenizer, feature, schema, args, valid):
    # The table itself is checked against jsonschema first.
    try:
        instance = json.loads(args)
        truth = Draft202012Validator(schema).is_valid(instance)
    except ValueError:
        truth = False
    assert truth is valid, "table row disagrees with jsonschema"
    result = drive(enforcer_for(tiny_store, {"f": schema}), tiny_tokenizer, call(args))
    assert result.ok is (valid and feature not in STRICTER), result


def _value_enforcer(store, schema) -> RequestEnforcer:
    prepared = prepare_schema(schema, require_object=False)
    lengths = prepared.schema if prepared.has_length_bounds else None
    spec = EnforcerSpec((ToolGrammar("f", prepared.grammar_json, lengths),))
    enforcer = RequestEnforcer(spec, store)
    for token in ("<|tool_calls_section_begin|>", "<|tool_call_begin|>"):
        assert enforcer.accept(store.table.markers.__getattribute__(_MARKER[token]))
    for token in store.table.continuations(b"", [b"functions.f:0"])[:0]:
        pass
    header = b"functions.f:0"
    while enforcer.phase is Phase.HEADER and enforcer._header != header:
        ids = store.table.continuations(enforcer._header, [header])
        longest = max(ids, key=lambda i: len(store.table.token_bytes[i]))
        assert enforcer.accept(longest)
    assert enforcer.accept(store.table.markers.argument_begin)
    assert enforcer.phase is Phase.ARGS
    return enforcer


_MARKER = {
    "<|tool_calls_section_begin|>": "section_begin",
    "<|tool_call_begin|>": "call_begin",
}


def _closers(store, tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ('"', "}", "]", ",")]
    ids += [
        tokenizer.encode(t, add_special_tokens=False)[0] for t in ("0", "1", " true")
    ]
    return [*ids, store.table.markers.call_end]


def test_walle_schema_grammars_only_accept_valid_instances(tiny_store, tiny_tokenizer):
    """Every walle schema compiles; random walks through its grammar end in
    instances that pass jsonschema (the grammar is a subset of the schema).

    A walk may not finish in its step budget (e.g. ``minLength:
    999999999999``, or a required recursive key): those prove nothing either
    way, so nearly all schemas must produce finished walks.
    """
    closers = _closers(tiny_store, tiny_tokenizer)
    cases = walle_schemas()
    if not cases:
        pytest.skip("Moonshot's walle suite is not beside the repo (../shared)")
    assert len(cases) >= 110
    unfinished, invalid = [], []
    for case, schema in cases:
        validator = Draft202012Validator(schema)
        rng = random.Random(case)
        finished = 0
        for _ in range(6):
            if finished >= 2:
                break
            enforcer = _value_enforcer(tiny_store, schema)
            out = random_call(enforcer, rng, closers, steps=600)
            if out is None:
                continue
            finished += 1
            errors = [e.message for e in validator.iter_errors(json.loads(out))]
            if errors:
                invalid.append((case, out, errors))
        if not finished:
            unfinished.append(case)
    assert not invalid
    assert len(unfinished) <= 3, unfinished


def test_bfcl_schemas_compile_or_degrade(tiny_store, tiny_tokenizer):
    """Real-world tool definitions (BFCL): every one prepares and compiles;
    a sample of them enforces valid arguments end to end."""
    pytest.importorskip("bfcl_eval")
    from vllm_kimi_tools.enforcer.admission import build_spec
    from vllm_kimi_tools.tools import DeclaredTool

    functions = list(bfcl_functions())
    assert len(functions) > 5000
    specs = []
    refused = []
    for fn in functions:  # every BFCL definition prepares (or degrades)...
        try:
            spec, _notes = build_spec(
                [DeclaredTool(fn["name"], fn.get("parameters"))], first_index=0
            )
        except ValueError as e:
            refused.append(str(e))
            continue
        specs.append(spec)
    # ...but one no call can satisfy: a required integer whose enum holds
    # only strings ("1" ... "9").
    assert len(refused) == 1 and "number_of_tickets" in refused[0], refused
    rng = random.Random(0)
    closers = _closers(tiny_store, tiny_tokenizer)
    for spec in rng.sample(specs, 40):
        tiny_store.get(spec.tools[0].grammar)  # compiles (or raises)
        assert spec.tools[0].grammar not in tiny_store.failed
        enforcer = RequestEnforcer(spec, tiny_store)
        walk = enforcer_walk_to_args(enforcer, tiny_store, spec.tools[0].name)
        out = random_call(walk, rng, closers, steps=150)
        if out is not None:
            json.loads(out)  # well-formed JSON object arguments


def enforcer_walk_to_args(enforcer, store, name: str) -> RequestEnforcer:
    m = store.table.markers
    assert enforcer.accept(m.section_begin) and enforcer.accept(m.call_begin)
    header = f"functions.{name}:0".encode()
    while enforcer._header != header:
        ids = store.table.continuations(enforcer._header, [header])
        assert enforcer.accept(max(ids, key=lambda i: len(store.table.token_bytes[i])))
    assert enforcer.accept(m.argument_begin)
    return enforcer


def test_vocab_sized_rows_are_never_empty(tiny_store, tiny_tokenizer):
    enforcer = _value_enforcer(tiny_store, {"type": "object"})
    assert allowed(enforcer, tiny_store.table.vocab_size).any()


def test_a_named_tool_jumps_the_compile_queue(tiny_tokenizer) -> None:
    """A call header that names one tool moves that tool's grammar ahead of a
    queue held up by another compile, before the arguments need it."""
    import threading
    import time

    from vllm_kimi_tools.enforcer.grammars import GrammarStore

    store = GrammarStore.for_hf_tokenizer(tiny_tokenizer, len(tiny_tokenizer))
    gate, real = threading.Event(), store._compile
    blocker = json.dumps({"type": "object", "title": "blocker"})

    def compile_(key: str):
        if key == blocker:
            assert gate.wait(60)
        return real(key)

    store._compile = compile_  # type: ignore[method-assign]
    try:
        store.prefetch([blocker])
        tools = {
            "get_weather": {"type": "object", "properties": {"q": {"type": "string"}}},
            "search": {"type": "object", "properties": {"n": {"type": "integer"}}},
        }
        enforcer = enforcer_for(store, tools)  # both queued behind the blocker
        key = enforcer._by_name["get_weather"].grammar
        assert key in store._pending and not store._pending[key].running()
        time.sleep(0.2)
        assert key not in store._ready  # still queued
        head = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        assert drive(enforcer, tiny_tokenizer, head).ok
        deadline = time.monotonic() + 60
        while key not in store._ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert key in store._ready and blocker not in store._ready
        search = enforcer._by_name["search"].grammar
        assert search not in store._ready and search not in store._urgent
    finally:
        gate.set()
        store.shutdown()
