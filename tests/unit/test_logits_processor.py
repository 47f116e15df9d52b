# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer logits processor with hand-built batches on CPU tensors.

V1: ``BatchUpdate`` adds, removes, swaps, preemption re-adds, async
placeholders. V2: ``add_request`` + ``apply(logits, ctx)`` with the newest
token in ``ctx.input_ids`` and history in ``all_token_ids``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("vllm")
pytest.importorskip("xgrammar")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    MoveDirectionality,
)
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext  # noqa: E402

from kimi_testbed.processor import processor  # noqa: E402
from vllm_kimi_tools import metrics  # noqa: E402
from vllm_kimi_tools.enforcer.admission import (
    build_spec,  # noqa: E402
)
from vllm_kimi_tools.enforcer.logits_processor import KimiToolEnforcer  # noqa: E402
from vllm_kimi_tools.enforcer.spec import SPEC_KEY  # noqa: E402
from vllm_kimi_tools.tools import DeclaredTool  # noqa: E402

V = 163_840
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def params(**kw) -> SamplingParams:
    spec, _ = build_spec([DeclaredTool("get_weather", WEATHER)], first_index=0)
    return SamplingParams(extra_args={SPEC_KEY: spec.to_json()}, **kw)


def update(added=(), removed=(), moved=(), size=2) -> BatchUpdate:
    return BatchUpdate(
        batch_size=size, removed=list(removed), added=list(added), moved=list(moved)
    )


def finite(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(~torch.isneginf(row)).flatten().tolist())


@pytest.fixture
def m(grammar_store):
    return grammar_store.table.markers


def test_v1_add_mask_move_remove(grammar_store, m) -> None:
    lp = processor(grammar_store)
    out0: list[int] = []
    lp.update_state(
        update(added=[(0, params(), [1, 2], out0), (1, SamplingParams(), [1], [])])
    )
    logits = torch.zeros(2, V)
    lp.apply(logits)
    banned = set(range(V)) - finite(logits[0])
    assert banned == {
        m.argument_begin,
        m.call_end,
        m.section_end,
        m.think_end,
    }
    assert len(finite(logits[1])) == V  # not enforced: untouched

    out0.append(m.section_begin)  # the runner appends the sampled token
    logits = torch.zeros(2, V)
    lp.apply(logits)
    assert finite(logits[0]) == {m.call_begin}

    lp.update_state(update(moved=[(0, 1, MoveDirectionality.SWAP)]))
    logits = torch.zeros(2, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V and finite(logits[1]) == {m.call_begin}

    lp.update_state(update(removed=[1], size=1))
    logits = torch.zeros(2, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V == len(finite(logits[1]))


@pytest.mark.parametrize("every", [1, 4, 0])
def test_blocked_steps_are_sampled_and_scaled(grammar_store, m, monkeypatch, every):
    """The model's first choice is blocked on every step here (it wants
    ``[EOS]`` where only markers may come); it is measured on one step in
    ``every`` and scaled, so 8 steps count 8 (or 0 when switched off)."""
    monkeypatch.setenv("KIMI_TOOLS_BLOCKED_SAMPLE", str(every))
    lp = processor(grammar_store)
    output: list[int] = [m.section_begin]
    lp.update_state(update(added=[(0, params(), [1], output)], size=1))
    before = metrics.counts().get(metrics.BLOCKED_TOKENS_TOTAL, 0)
    for _ in range(8):
        logits = torch.zeros(1, V)
        logits[0, 163_585] = 5.0  # [EOS]: not allowed in an open section
        lp.apply(logits)
        assert finite(logits[0]) == {m.call_begin}
    lp.flush_metrics()
    counted = metrics.counts().get(metrics.BLOCKED_TOKENS_TOTAL, 0) - before
    assert counted == (8 if every else 0)


def test_v1_preempted_request_is_replayed_on_re_add(grammar_store, kimi_tokenizer, m):
    lp = processor(grammar_store)
    history = kimi_tokenizer.encode(
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city"',
        add_special_tokens=False,
    )
    lp.update_state(update(added=[(0, params(), [1], list(history))], size=1))
    logits = torch.zeros(1, V)
    lp.apply(logits)
    allowed = {kimi_tokenizer.decode([t]) for t in finite(logits[0])}
    assert any(a.startswith(":") for a in allowed), allowed
    # Blanks, then the colon (the real vocabulary has b" :" tokens too).
    bad = [a for a in allowed if a.strip() and not a.lstrip().startswith(":")]
    assert not bad, bad


def test_v1_arguments_mask_is_the_grammar(grammar_store, kimi_tokenizer, m):
    lp = processor(grammar_store)
    out = kimi_tokenizer.encode(
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        "<|tool_call_argument_begin|>",
        add_special_tokens=False,
    )
    lp.update_state(update(added=[(0, params(), [1], out)], size=1))
    logits = torch.randn(1, V)
    lp.apply(logits)
    texts = {kimi_tokenizer.decode([t]) for t in finite(logits[0])}
    assert any(t.startswith("{") for t in texts), texts
    assert all(t.lstrip().startswith("{") or not t.strip() for t in texts), texts


def test_v1_conflicting_constraints_restore_the_row(grammar_store, m) -> None:
    lp = processor(grammar_store)
    lp.update_state(
        update(added=[(0, params(allowed_token_ids=[m.call_end]), [1], [])], size=1)
    )
    logits = torch.full((1, V), float("-inf"))
    logits[0, m.call_end] = 1.0  # what an earlier stage left
    before = metrics.counts().get(f"{metrics.STOOD_DOWN_TOTAL}{{conflict}}", 0)
    lp.apply(logits)
    assert finite(logits[0]) == {m.call_end}
    assert metrics.counts()[f"{metrics.STOOD_DOWN_TOTAL}{{conflict}}"] == before + 1


def test_v1_async_placeholder_stands_down(grammar_store, m) -> None:
    lp = processor(grammar_store)
    out: list[int] = []
    lp.update_state(update(added=[(0, params(), [1], out)], size=1))
    lp.apply(torch.zeros(1, V))
    out.append(-1)
    logits = torch.zeros(1, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V
    assert lp._requests[0].enforcer.phase.value == "off"


def test_v1_contradicting_token_stands_down_counted(grammar_store, m) -> None:
    lp = processor(grammar_store)
    out: list[int] = []
    lp.update_state(update(added=[(0, params(), [1], out)], size=1))
    lp.apply(torch.zeros(1, V))
    key = f"{metrics.STOOD_DOWN_TOTAL}{{rejected}}"
    before = metrics.counts().get(key, 0)
    out.append(m.call_end)  # sampled although the Enforcer banned it
    logits = torch.zeros(1, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V
    assert metrics.counts()[key] == before + 1


def test_validate_params_refuses_a_broken_spec() -> None:
    with pytest.raises(ValueError):
        KimiToolEnforcer.validate_params(SamplingParams(extra_args={SPEC_KEY: "{"}))
    KimiToolEnforcer.validate_params(SamplingParams())  # not ours: fine


# -- Model Runner V2 -------------------------------------------------------


def ctx_for(slots, pos, input_ids) -> LogitsContext:
    n = len(slots)
    return LogitsContext(
        expanded_idx_mapping=torch.tensor(slots),
        idx_mapping=torch.tensor(slots),
        idx_mapping_np=np.array(slots),
        expanded_local_pos=torch.zeros(n, dtype=torch.int64),
        input_ids=torch.tensor(input_ids),
        pos=torch.tensor(pos),
        seq_lens_upper_bound_np=np.array(pos) + 1,
    )


def test_v2_slots_history_and_resume(grammar_store, kimi_tokenizer, m) -> None:
    prompt_len = np.zeros(8, dtype=np.int64)
    all_tokens = torch.zeros(8, 64, dtype=torch.int64)
    states = SimpleNamespace(
        prompt_len=SimpleNamespace(np=prompt_len),
        all_token_ids=SimpleNamespace(gpu=all_tokens),
    )
    lp = processor(grammar_store, states)
    prompt_len[3] = 10
    assert lp.add_request(3, params()) is True
    assert lp.add_request(5, SamplingParams()) is False

    # Prefill step: slot 3's row feeds its last prompt token.
    logits = torch.zeros(2, V)
    lp.apply(logits, ctx_for([5, 3], [4, 9], [7, 7]))
    assert len(finite(logits[0])) == V
    assert m.call_end not in finite(logits[1])

    # Decode: the newest token (section begin) arrives in input_ids.
    logits = torch.zeros(2, V)
    lp.apply(logits, ctx_for([3, 5], [10, 5], [m.section_begin, 7]))
    assert finite(logits[0]) == {m.call_begin}

    # Preempted and resumed into slot 6 with three output tokens written.
    header = kimi_tokenizer.encode("functions", add_special_tokens=False)
    prompt_len[6] = 10
    all_tokens[6, 10:12] = torch.tensor([m.section_begin, m.call_begin])
    assert lp.add_request(6, params()) is True
    logits = torch.zeros(1, V)
    lp.apply(logits, ctx_for([6], [12], header[:1]))
    texts = {kimi_tokenizer.decode([t]) for t in finite(logits[0])}
    assert texts and all(t.startswith(".") for t in texts), texts

    # A recycled slot with a request that is not enforced is left alone.
    assert lp.add_request(6, SamplingParams()) is False
    logits = torch.zeros(1, V)
    lp.apply(logits, ctx_for([6], [20], [7]))
    assert len(finite(logits[0])) == V


def test_v2_reads_positions_on_the_host(grammar_store, m) -> None:
    """Positions come from ``seq_lens_upper_bound_np`` (host), not from
    ``ctx.pos`` (a device tensor: reading it would wait for the device)."""
    states = SimpleNamespace(
        prompt_len=SimpleNamespace(np=np.full(4, 10, dtype=np.int64)),
        all_token_ids=SimpleNamespace(gpu=torch.zeros(4, 64, dtype=torch.int64)),
    )
    lp = processor(grammar_store, states)
    lp.add_request(2, params())

    def step(pos: int, newest: int) -> torch.Tensor:
        ctx = ctx_for([2], [pos], [newest])
        ctx = dataclasses.replace(ctx, pos=torch.tensor([-999]))  # never read
        logits = torch.zeros(1, V)
        lp.apply(logits, ctx)
        return logits[0]

    step(9, 7)  # prefill: the prompt's last token
    assert finite(step(10, m.section_begin)) == {m.call_begin}


def test_busy_steps_leave_the_tallies_on_the_device(grammar_store, monkeypatch):
    """A request leaving a busy batch moves no tally to the host (a device
    sync); the batch emptying does."""
    lp = processor(grammar_store)
    flushes = []
    monkeypatch.setattr(lp, "flush_metrics", lambda: flushes.append(1))
    lp.update_state(update(added=[(0, params(), [1], []), (1, params(), [1], [])]))
    lp.apply(torch.zeros(2, V))
    lp.update_state(update(removed=[1], size=1))
    assert flushes == []
    lp.update_state(update(removed=[0], size=0))
    assert flushes == [1]


def test_v2_speculative_rows_stand_down(grammar_store, m) -> None:
    states = SimpleNamespace(
        prompt_len=SimpleNamespace(np=np.zeros(4, dtype=np.int64)),
        all_token_ids=SimpleNamespace(gpu=torch.zeros(4, 8, dtype=torch.int64)),
    )
    lp = processor(grammar_store, states)
    lp.add_request(0, params())
    logits = torch.zeros(3, V)  # three rows (drafts) for one request
    ctx = ctx_for([0], [3], [1])
    lp.apply(logits, ctx)
    assert len(finite(logits[0])) == V
    assert lp._requests[0].enforcer.phase.value == "off"


# -- where the output starts: the prompt's tail ------------------------------

GEN = [163588, 69702, 163601]  # <|im_assistant|>assistant<|im_middle|>
PROMPTS = {
    "k2": [163587, 1000, 163586, *GEN],
    "thinking": [163587, 1000, 163586, *GEN, 163606],
    "no thinking": [163587, 1000, 163586, *GEN, 163606, 163607],
}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_v1_reads_where_the_output_starts(grammar_store, m, kind) -> None:
    lp = processor(grammar_store)
    lp.update_state(update(added=[(0, params(), PROMPTS[kind], [])], size=1))
    logits = torch.zeros(1, V)
    lp.apply(logits)
    allowed = finite(logits[0])
    assert (m.think_end in allowed) is (kind == "thinking")
    assert (m.think_begin in allowed) is (kind == "k2")


class _Recorder:
    """A token buffer that records which slices are read."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data, self.reads = data, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_v2_reads_the_prompt_tail_once(grammar_store, m) -> None:
    prompt = [163587, *[1000] * 30, 163586, *GEN, 163606]
    prompt_len = np.zeros(4, dtype=np.int64)
    tokens = _Recorder(torch.zeros(4, 64, dtype=torch.int64))
    states = SimpleNamespace(
        prompt_len=SimpleNamespace(np=prompt_len),
        all_token_ids=SimpleNamespace(gpu=tokens),
    )
    lp = processor(grammar_store, states)
    prompt_len[2] = len(prompt)
    tokens.data[2, : len(prompt)] = torch.tensor(prompt)
    assert lp.add_request(2, params()) is True
    assert tokens.reads == []  # not before the runner has written the slot
    for step in range(3):
        logits = torch.zeros(1, V)
        lp.apply(logits, ctx_for([2], [len(prompt) - 1 + step], [7 if step else 0]))
        assert m.think_end in finite(logits[0])  # inside thinking: may close it
    assert tokens.reads == [(2, slice(len(prompt) - 16, len(prompt)))]


@pytest.fixture
def to_args(kimi_tokenizer, m) -> list[int]:
    """Output ids from the section's start to the call's arguments."""
    header = kimi_tokenizer.encode("functions.get_weather:0", add_special_tokens=False)
    return [m.section_begin, m.call_begin, *header, m.argument_begin]


def test_an_empty_grammar_row_stands_down(
    grammar_store, m, monkeypatch, to_args
) -> None:
    from vllm_kimi_tools.enforcer.machine import RequestEnforcer

    monkeypatch.setattr(RequestEnforcer, "_args_mask", lambda self, row: False)
    lp = processor(grammar_store)
    out = list(to_args)
    lp.update_state(update(added=[(0, params(), PROMPTS["k2"], out)], size=1))
    key = f"{metrics.STOOD_DOWN_TOTAL}{{empty}}"
    before = metrics.counts().get(key, 0)
    logits = torch.zeros(1, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V  # never an all -inf row
    assert lp._requests[0].enforcer.phase.value == "off"
    assert metrics.counts()[key] == before + 1


def test_length_fallbacks_are_counted(grammar_store, m, monkeypatch, to_args) -> None:
    from vllm_kimi_tools.enforcer.machine import RequestEnforcer

    def fallback(self, row):
        self._degrade("dead_end")
        return True

    monkeypatch.setattr(RequestEnforcer, "_args_mask", fallback)
    lp = processor(grammar_store)
    out = list(to_args)
    lp.update_state(update(added=[(0, params(), PROMPTS["k2"], out)], size=1))
    for _ in range(2):
        lp.apply(torch.zeros(1, V))
    assert lp.length_fallbacks == 2


# -- containment: a request can never take the engine down --------------------


def params_for(schema, **kw) -> SamplingParams:
    spec, _ = build_spec([DeclaredTool("f", schema)], first_index=0, **kw)
    return SamplingParams(extra_args={SPEC_KEY: spec.to_json()})


class _Boom(RuntimeError):
    pass


def _explode(*args, **kw):
    raise _Boom("a machine bug")


def test_an_exception_in_one_request_stands_only_it_down(
    grammar_store, m, monkeypatch
) -> None:
    """Row 0's machine raises in directive(), then row 2's in accept(): each
    stands down (counted as ``error``, logged once), the batch goes on and
    the other rows stay enforced."""
    warnings: list[str] = []
    monkeypatch.setattr(
        "vllm_kimi_tools.enforcer.logits_processor.logger.warning",
        lambda msg, *a, **kw: warnings.append(msg % a),
    )
    lp = processor(grammar_store)
    outs: list[list[int]] = [[m.section_begin] for _ in range(3)]
    lp.update_state(
        update(added=[(i, params(), PROMPTS["k2"], outs[i]) for i in range(3)], size=3)
    )
    lp.apply(torch.zeros(3, V))
    key = f"{metrics.STOOD_DOWN_TOTAL}{{error}}"
    before = metrics.counts().get(key, 0)
    lp._requests[0].enforcer.directive = _explode
    logits = torch.zeros(3, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V  # stood down: untouched
    assert finite(logits[1]) == finite(logits[2]) == {m.call_begin}
    lp._requests[2].enforcer.accept = _explode
    outs[2].append(m.call_begin)
    outs[1].append(m.call_begin)
    logits = torch.zeros(3, V)
    lp.apply(logits)
    assert len(finite(logits[2])) == V
    assert m.call_begin not in finite(logits[1])  # row 1: in its call header
    assert 0 < len(finite(logits[1])) < 100
    assert metrics.counts()[key] == before + 2
    assert [lp._requests[i].stood_down for i in range(3)] == [True, False, True]
    errors = [w for w in warnings if "error:" in w]
    assert len(errors) == 1 and "_Boom: a machine bug" in errors[0]


@pytest.mark.parametrize("runner", ["v1", "v2"])
def test_a_request_stood_down_before_its_machine_was_built_goes_on_alone(
    grammar_store, m, monkeypatch, runner
) -> None:
    """Row 0 stands down before it has a machine (its prompt unreadable); as
    its tokens keep coming, the rest of the batch stays enforced."""
    import vllm_kimi_tools.enforcer.logits_processor as lpm

    real = lpm.start_from_tail
    reads = iter([ValueError("unreadable"), None])

    def start(read, markers):
        if (problem := next(reads, None)) is not None:
            raise problem
        return real(read, markers)

    monkeypatch.setattr(lpm, "start_from_tail", start)
    table = grammar_store.table
    text = next(  # an ordinary word: free text
        i
        for i, data in enumerate(table.token_bytes)
        if data.isalpha() and len(data) > 2 and i not in table.special_ids
    )
    if runner == "v1":
        lp = processor(grammar_store)
        outs: list[list[int]] = [[], []]
        lp.update_state(
            update(added=[(i, params(), PROMPTS["k2"], outs[i]) for i in range(2)])
        )

        def step(token: int | None, logits: torch.Tensor) -> None:
            for out in outs if token is not None else ():
                out.append(token)
            lp.apply(logits)
    else:
        states = SimpleNamespace(
            prompt_len=SimpleNamespace(np=np.zeros(2, dtype=np.int64)),
            all_token_ids=SimpleNamespace(gpu=torch.zeros(2, 8, dtype=torch.int64)),
        )
        lp = processor(grammar_store, states)
        for slot in range(2):
            lp.add_request(slot, params())
        pos = iter(range(8))

        def step(token: int | None, logits: torch.Tensor) -> None:
            at = next(pos)
            lp.apply(logits, ctx_for([0, 1], [at, at], [token or text] * 2))

    step(None, torch.zeros(2, V))
    assert lp._requests[0].stood_down and not lp._requests[1].stood_down
    for token in (text, text, m.section_begin):
        logits = torch.zeros(2, V)
        step(token, logits)
        assert len(finite(logits[0])) == V
        assert not lp._requests[1].stood_down
    assert finite(logits[1]) == {m.call_begin}


def test_a_failing_batch_mask_leaves_no_empty_row(grammar_store, m, monkeypatch):
    lp = processor(grammar_store)
    lp.update_state(update(added=[(0, params(), [1], [m.section_begin])], size=1))
    monkeypatch.setattr(KimiToolEnforcer, "_apply", _explode)
    logits = torch.zeros(1, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V and lp._requests[0].stood_down


def test_v2_contains_a_failing_machine(grammar_store, m) -> None:
    states = SimpleNamespace(
        prompt_len=SimpleNamespace(np=np.zeros(4, dtype=np.int64)),
        all_token_ids=SimpleNamespace(gpu=torch.zeros(4, 8, dtype=torch.int64)),
    )
    lp = processor(grammar_store, states)
    lp.add_request(0, params())
    lp.add_request(1, params())
    lp.apply(torch.zeros(2, V), ctx_for([0, 1], [0, 0], [1, 1]))
    lp._requests[1].enforcer.accept = _explode
    logits = torch.zeros(2, V)
    lp.apply(logits, ctx_for([0, 1], [1, 1], [m.section_begin, m.section_begin]))
    assert finite(logits[0]) == {m.call_begin}
    assert len(finite(logits[1])) == V and lp._requests[1].stood_down


def test_a_grammar_still_compiling_stands_down_as_compile(
    grammar_store, m, monkeypatch, to_args
) -> None:
    from vllm_kimi_tools.enforcer.grammars import GrammarNotReady

    def slow(self, key, wait_s=None):
        raise GrammarNotReady("the argument grammar was not compiled within 5 s")

    monkeypatch.setattr(type(grammar_store), "get", slow)
    lp = processor(grammar_store)
    lp.update_state(update(added=[(0, params(), PROMPTS["k2"], list(to_args))], size=1))
    key = f"{metrics.STOOD_DOWN_TOTAL}{{compile}}"
    before = metrics.counts().get(key, 0)
    logits = torch.zeros(1, V)
    lp.apply(logits)
    assert len(finite(logits[0])) == V
    assert metrics.counts()[key] == before + 1


def test_a_forged_spec_is_refused_at_admission() -> None:
    deep: dict = {"type": "string"}
    for _ in range(300):
        deep = {"properties": {"a": deep}}
    spec = (
        '{"v": 1, "tools": [{"name": "f", "grammar": "{}", "lengths": '
        + json.dumps(deep)
        + "}]}"
    )
    for text in (spec, '{"v": 1, "tools": [{"name": 3}]}', "[1]", '{"v": 1}'):
        with pytest.raises(ValueError):
            KimiToolEnforcer.validate_params(
                SamplingParams(extra_args={SPEC_KEY: text})
            )


def test_a_spec_text_is_parsed_once_and_every_text_apart() -> None:
    from vllm_kimi_tools.enforcer.logits_processor import spec_of

    later, _ = build_spec([DeclaredTool("get_weather", WEATHER)], first_index=3)
    first, again = params(), params()
    assert spec_of(first) is spec_of(again)  # the same text: parsed once
    third = SamplingParams(extra_args={SPEC_KEY: later.to_json()})
    assert (spec_of(first).first_index, spec_of(third).first_index) == (0, 3)
    for _ in range(2):  # a refusal is never remembered as a spec
        with pytest.raises(ValueError):
            spec_of(SamplingParams(extra_args={SPEC_KEY: '{"v": 1}'}))


def _fan_out(levels: int) -> dict:
    defs = {
        f"d{i}": {
            "anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 3
            + [{"type": "string", "maxLength": i + 1}]
        }
        for i in range(levels)
    }
    defs[f"d{levels}"] = {"type": "string", "maxLength": 2}
    return {
        "$defs": defs,
        "type": "object",
        "properties": {"s": {"$ref": "#/$defs/d0"}},
        "required": ["s"],
    }


ISSUE_SCHEMAS = {
    "enum beyond maxLength": {
        "type": "object",
        "properties": {"s": {"enum": ["abcdef", "ghijkl", "ab"], "maxLength": 3}},
        "required": ["s"],
    },
    "format and maxLength": {
        "type": "object",
        "properties": {"d": {"type": "string", "format": "date", "maxLength": 8}},
        "required": ["d"],
    },
    "anyOf of bounded strings": {
        "type": "object",
        "properties": {
            "s": {
                "anyOf": [
                    {"type": "string", "maxLength": 3},
                    {"type": "string", "maxLength": 5, "pattern": "^a"},
                    {"type": "string", "minLength": 2, "maxLength": 7},
                ]
            }
        },
        "required": ["s"],
    },
    "anyOf/$ref fan-out": _fan_out(30),
}


@pytest.mark.parametrize("name", list(ISSUE_SCHEMAS))
def test_the_issue_schemas_decode_through_the_processor(
    real_grammar_store, name
) -> None:
    """The hostile client's schemas, forced, with random logits on the real
    vocabulary: no exception, no empty row, every step fast, the call ends
    and its arguments validate."""
    from jsonschema import Draft202012Validator

    schema = ISSUE_SCHEMAS[name]
    store = real_grammar_store
    mk = store.table.markers
    lp = processor(store)
    out: list[int] = []
    lp.update_state(
        update(added=[(0, params_for(schema, choice="required"), [1], out)], size=1)
    )
    gen = torch.Generator().manual_seed(0)
    slowest = 0.0
    for _ in range(200):
        logits = torch.randn(1, V, generator=gen)
        start = time.perf_counter()
        lp.apply(logits)
        slowest = max(slowest, time.perf_counter() - start)
        assert not torch.isneginf(logits[0]).all()
        # Prefer closing: the call ends within the step budget.
        for t in (mk.call_end, *mk.stops, mk.section_end):
            if not torch.isneginf(logits[0, t]):
                logits[0, t] += 50
        token = int(torch.argmax(logits[0]))
        out.append(token)
        if token in mk.stops:
            break
    req = lp._requests[0]
    assert not req.stood_down and req.enforcer.phase.value == "after", req
    assert slowest < 0.5
    text = b"".join(store.table.token_bytes[t] for t in out).decode()
    args = text.split("<|tool_call_argument_begin|>")[1].split("<|tool_call_end|>")[0]
    assert Draft202012Validator(schema).is_valid(json.loads(args)), args


def test_a_dense_grammar_row_is_not_taken_for_a_sparse_one() -> None:
    """A word of -1 allows 32 tokens (NumPy's bit count of a signed -1 is 1,
    which sent rows of 100,000 allowed ids down the keep-list path)."""
    from vllm_kimi_tools.enforcer.masks import SPARSE_ROW_MAX, allowed_count

    words = np.full(V // 32, -1, dtype=np.int32)
    assert allowed_count(words) == V
    words[: V // 64] = 0
    assert allowed_count(words) == V // 2 > SPARSE_ROW_MAX
    sparse = np.zeros(V // 32, dtype=np.int32)
    sparse[:3] = -1
    assert allowed_count(sparse) == 96 <= SPARSE_ROW_MAX


@pytest.mark.parametrize("width", [V // 32, 7, 1])  # even and odd word counts
def test_the_sparse_routing_counts_what_unpacking_the_bits_counts(width) -> None:
    """Routing by nonzero words first, by bits where they cannot tell: the
    same answer as counting every bit, in each regime (few words, more words
    than the limit, and the middle, where only the bits can tell)."""
    from vllm_kimi_tools.enforcer.masks import SPARSE_ROW_MAX, allowed_count, is_sparse

    rng = np.random.default_rng(width)

    def truth(words: np.ndarray) -> int:
        return int(np.unpackbits(words.view(np.uint8)).sum())

    rows = []
    for nonzero in (0, 1, SPARSE_ROW_MAX // 32, 200, SPARSE_ROW_MAX + 1, width):
        for bits in ("one", "all", "random"):
            words = np.zeros(width, dtype=np.int32)
            at = rng.choice(width, size=min(nonzero, width), replace=False)
            if bits == "one":
                words[at] = -(1 << 31) if nonzero % 2 else 1  # the sign bit, or bit 0
            elif bits == "all":
                words[at] = -1
            else:
                words.view(np.uint32)[at] = rng.integers(1, 2**32, size=len(at))
            rows.append(words)
    batch = np.stack(rows)
    assert allowed_count(batch).tolist() == [truth(r) for r in rows]
    for words in rows:
        assert allowed_count(words) == truth(words)
        assert is_sparse(words) is (truth(words) <= SPARSE_ROW_MAX), truth(words)


@given(st.lists(st.integers(0, 40), max_size=30))
def test_the_rows_to_fill_come_as_runs_of_consecutive_rows(rows) -> None:
    from vllm_kimi_tools.enforcer.masks import runs

    got = runs(rows)
    assert [r for start, stop in got for r in range(start, stop)] == sorted(set(rows))
    # Maximal runs: each starts after a gap.
    assert all(a[1] < b[0] for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_first_choices_are_each_rows_argmax(dtype) -> None:
    """The blocked tally's first choices (NumPy on CPU where it can read the
    dtype, torch elsewhere): the first maximum of each row, -inf rows too."""
    from vllm_kimi_tools.enforcer.masks import first_choices

    logits = torch.randn(6, V).to(dtype)
    logits[1, 7] = logits[1, 70_000] = 1e4  # a tie: the first wins
    logits[3] = float("-inf")
    logits[3, 163_000] = 0.0
    rows = [0, 1, 3, 5]
    with torch.inference_mode():  # as vLLM's sampler runs
        got = first_choices(logits, rows, torch.tensor(rows))
    assert got.tolist() == logits[rows].float().argmax(dim=-1).tolist()
    assert got[1] == 7 and got[2] == 163_000


@pytest.mark.parametrize("contiguous", [True, False])
def test_filled_rows_are_routed_and_applied_together(contiguous: bool) -> None:
    """Filled bitmask rows, routed in one pass: sparse rows become keep-lists
    (their bitmask reset), dense ones go to the kernel; the logits come out
    as masking each row by its own bits would leave them."""
    from vllm_kimi_tools.enforcer.machine import FILLED, Ban, Only
    from vllm_kimi_tools.enforcer.masks import MaskPlan, apply_plan

    rng = np.random.default_rng(0)
    width = V // 32
    bitmask = np.full((6, width), -1, dtype=np.int32)
    bitmask[1] = 0
    bitmask[1, [0, 7, width - 1]] = [-1, -(1 << 31), 5]  # 32 + 1 + 2 tokens
    bitmask[2, : width // 2] = 0  # half the vocabulary: dense
    bitmask[4] = 0
    bitmask[4, 3] = 1 << 9  # one token
    expected = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")
    filled = (1, 2, 4) if contiguous else (1, 4)  # xgrammar's kernel: contiguous
    if not contiguous:
        bitmask[2] = -1
    plan = MaskPlan()
    plan.add(0, Ban((5, 6)))
    for row in filled:
        plan.add(row, FILLED)
    plan.add(3, Only((11, 12)))
    plan.finish(bitmask)
    assert plan.dense_rows == ([2] if contiguous else [])
    assert sorted(plan.keep_rows) == [1, 3, 4]
    assert (bitmask[[1, 4]] == -1).all()
    assert (bitmask[2] == -1).all() is not contiguous
    values = rng.standard_normal((6, V)).astype(np.float32)
    logits = torch.from_numpy(values if contiguous else values.T.copy().T)
    assert logits.is_contiguous() is contiguous
    before = logits.clone()
    apply_plan(logits, plan, bitmask)
    assert (bitmask == -1).all()  # every row reset for the next step
    for row in filled:
        keep = expected[row].astype(bool)
        assert torch.equal(logits[row, keep], before[row, keep]), row
        assert torch.isneginf(logits[row, ~keep]).all()
    assert int((~torch.isneginf(logits[1])).sum()) == 35
    if not contiguous:
        assert torch.equal(logits[2], before[2])
    assert torch.isneginf(logits[0, [5, 6]]).all()
    assert int(torch.isneginf(logits[0]).sum()) == 2
    assert (~torch.isneginf(logits[3])).nonzero().flatten().tolist() == [11, 12]
    assert torch.equal(logits[5], before[5])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("contiguous", [True, False])
def test_rows_that_ban_many_tokens_are_masked_bit_for_bit_as_by_the_kernel(
    dtype, contiguous
) -> None:
    """On CPU, a dense row that bans many tokens (more than
    KERNEL_MAX_BANNED) takes the bitwise passes, one that bans few the
    kernel; either way the logits come out as xgrammar's kernel leaves them,
    bit for bit: NaN and infinities where allowed kept, -inf where banned."""
    import xgrammar as xgr

    from vllm_kimi_tools.enforcer.machine import FILLED
    from vllm_kimi_tools.enforcer.masks import KERNEL_MAX_BANNED, MaskPlan, apply_plan

    rng = np.random.default_rng(2)
    width = V // 32
    bits = np.ones((5, V), dtype=bool)
    bits[0] = rng.random(V) < 0.5  # bans half: many
    bits[1] = rng.random(V) < 0.1  # an email format's row: bans 90%
    bits[2, rng.choice(V, KERNEL_MAX_BANNED, replace=False)] = False  # just few
    bits[3, rng.choice(V, KERNEL_MAX_BANNED + 1, replace=False)] = False
    bits[4, V // 2 :] = False  # half, in a block
    grammar = np.packbits(bits, axis=1, bitorder="little").view(np.int32)
    assert grammar.shape == (5, width)
    values = rng.standard_normal((5, V)).astype(np.float32)
    values[:, ::97] = np.nan
    values[:, 1::89] = np.inf
    values[:, 2::83] = -np.inf
    values = torch.from_numpy(values).to(dtype)
    expected = values.clone()
    xgr.apply_token_bitmask_inplace(expected, torch.from_numpy(grammar.copy()))
    # (xgrammar's kernel takes contiguous logits only, as vLLM's are.)
    rows = [0, 1, 2, 3, 4] if contiguous else [0, 1, 3, 4]
    ints = {2: torch.int16, 4: torch.int32}[values.element_size()]
    for bitwise in (True, False) if contiguous else (True,):
        plan, bitmask = MaskPlan(bitwise=bitwise), grammar.copy()
        for row in rows:
            plan.add(row, FILLED)
        plan.finish(bitmask)
        assert plan.bitwise_rows == ([0, 1, 3, 4] if bitwise else [])
        assert plan.dense_rows == [r for r in rows if r == 2 or not bitwise]
        logits = values.clone() if contiguous else values.T.contiguous().T
        assert logits.is_contiguous() is contiguous
        apply_plan(logits, plan, bitmask)
        assert (bitmask[rows] == -1).all()  # reset for the next step
        assert torch.equal(logits[rows].view(ints), expected[rows].view(ints))


def test_one_bitmask_plan_masks_as_the_per_kind_plan() -> None:
    """The GPU plan (every row's directive written into its bitmask row, one
    kernel) leaves the logits exactly as the CPU plan (scatters, keep-lists,
    the kernel for dense rows) does; run here on CPU tensors."""
    from vllm_kimi_tools.enforcer.machine import FILLED, Ban, Only
    from vllm_kimi_tools.enforcer.masks import MaskPlan, apply_plan

    rng = np.random.default_rng(1)
    width = V // 32
    grammar = np.full((8, width), -1, dtype=np.int32)
    grammar[2, : width // 2] = 0  # dense
    grammar[3] = 0
    grammar[3, [0, 9]] = [-(1 << 31), 6]  # sparse: ids 31, 289, 290
    directives = {
        0: Ban((5, 6, 31, 32, V - 1)),  # two ids in a word, a word's last bit
        1: Only((0, 31, 63, 64, V - 1)),
        2: FILLED,
        3: FILLED,
        4: Ban((5, 6, 31, 32, V - 1)),  # the same tuple: one scatter
        5: Only((163_597,)),
        6: Ban((7,)),
    }  # row 7: not enforced
    values = rng.standard_normal((8, V)).astype(np.float32)
    out = []
    for one in (False, True):
        plan, bitmask = MaskPlan(one_bitmask=one), grammar.copy()
        for row, directive in directives.items():
            plan.add(row, directive)
        plan.finish(bitmask)
        logits = torch.from_numpy(values.copy())
        apply_plan(logits, plan, bitmask)
        assert (bitmask == -1).all()  # reset for the next step
        out.append(logits)
    assert torch.equal(out[0], out[1])
    assert torch.equal(out[1][7], torch.from_numpy(values[7]))
    assert int((~torch.isneginf(out[1][3])).sum()) == 3
    assert int(torch.isneginf(out[1][0]).sum()) == 5


def test_header_continuations_are_shared_and_bounded(
    grammar_store, monkeypatch
) -> None:
    from vllm_kimi_tools.enforcer import vocab

    table = grammar_store.table
    targets = (b"functions.get_weather:0", b"functions.search:0")

    def every_token_that_continues(written: bytes) -> tuple[int, ...]:
        return tuple(
            i
            for i, data in enumerate(table.token_bytes)
            if data
            and i not in table.special_ids
            and any(t.startswith(written + data) for t in targets)
        )

    first = table.continuations(b"functions.", targets)
    assert first == every_token_that_continues(b"functions.") and first
    assert table.continuations(b"functions.", list(targets)) is first  # memo
    # A tool set sharing a tool reuses that tool's lists.
    assert b"get_weather:0" in table._prefix_tokens
    monkeypatch.setattr(vocab, "CONTINUATIONS_CACHE", 2)
    monkeypatch.setattr(table, "_continuations", {})
    monkeypatch.setattr(table, "_prefix_tokens", {})
    for written in (b"", b"f", b"fu", b"fun", b"functions.s", b"functions.search:0"):
        got = table.continuations(written, targets)
        assert got == every_token_that_continues(written)
        assert len(table._continuations) <= 2 and len(table._prefix_tokens) <= 2
    # Full: the least recently used list goes, the busy one stays.
    for rest in (b"get_weather:0", b"search:0", b"get_weather:0", b"search:1"):
        table._prefixes_of(rest)
    assert list(table._prefix_tokens) == [b"get_weather:0", b"search:1"]


ARGS_OPEN = (
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    "<|tool_call_argument_begin|>"
)


def test_argument_rows_are_filled_as_one_batch(grammar_store, kimi_tokenizer) -> None:
    """Three rows in their arguments: one xgrammar batch fill, each row the
    grammar's own mask, as the one-row path gives it."""
    lp = processor(grammar_store)
    calls: list[int] = []
    lp.update_state(
        update(
            added=[
                (i, params(), [1], kimi_tokenizer.encode(ARGS_OPEN + text))
                for i, text in enumerate(['{"city": "Os', '{"ci', "{"])
            ],
            size=3,
        )
    )
    lp.apply(torch.zeros(3, V))  # the batcher now exists
    real = lp._batcher.batch_fill_next_token_bitmask
    lp._batcher = SimpleNamespace(
        batch_fill_next_token_bitmask=lambda m, b, indices: (
            calls.append(len(m)),
            real(m, b, indices=indices),
        )
    )
    logits = torch.zeros(3, V)
    lp.apply(logits)
    assert calls == [3]
    for row in range(3):
        enforcer = lp._requests[row].enforcer
        alone = np.full((V + 31) // 32, -1, np.int32)
        assert enforcer.directive(alone) is not None
        want = set(
            np.flatnonzero(np.unpackbits(alone.view(np.uint8), bitorder="little"))
        )
        assert finite(logits[row]) == {t for t in want if t < V}


def test_a_failing_batch_fill_fills_the_rows_one_by_one(
    grammar_store, kimi_tokenizer, monkeypatch
) -> None:
    """The batch fill raises: each row is filled alone, and the one whose
    matcher is broken stands down while the other stays enforced."""
    lp = processor(grammar_store)
    lp.update_state(
        update(
            added=[
                (i, params(), [1], kimi_tokenizer.encode(ARGS_OPEN + "{"))
                for i in range(2)
            ],
            size=2,
        )
    )
    lp.apply(torch.zeros(2, V))
    lp._batcher = SimpleNamespace(batch_fill_next_token_bitmask=_explode)
    broken = lp._requests[0].enforcer
    monkeypatch.setattr(broken, "fill_matcher", _explode)
    logits = torch.zeros(2, V)
    lp.apply(logits)
    assert lp._requests[0].stood_down and not lp._requests[1].stood_down
    assert len(finite(logits[0])) == V
    texts = {kimi_tokenizer.decode([t]) for t in finite(logits[1])}
    assert texts and all(t.strip().startswith('"') or not t.strip() for t in texts)


def test_blocked_tally_is_spread_over_the_steps(grammar_store, m, monkeypatch):
    """8 rows, every one blocked on every step, sampled one row in 4: each
    step looks at 2 rows (no step scans them all), and 8 steps count 64."""
    monkeypatch.setenv("KIMI_TOOLS_BLOCKED_SAMPLE", "4")
    lp = processor(grammar_store)
    outs = [[m.section_begin] for _ in range(8)]
    lp.update_state(
        update(added=[(i, params(), [1], outs[i]) for i in range(8)], size=8)
    )
    from vllm_kimi_tools.enforcer import logits_processor as lp_module

    looked: list[int] = []
    real = lp_module.first_choices
    monkeypatch.setattr(
        lp_module,
        "first_choices",
        lambda logits, rows, rows_t: (
            looked.append(len(rows)),
            real(logits, rows, rows_t),
        )[1],
    )
    before = metrics.counts().get(metrics.BLOCKED_TOKENS_TOTAL, 0)
    for _ in range(8):
        logits = torch.zeros(8, V)
        logits[:, 163_585] = 5.0  # [EOS]: not allowed in an open section
        lp.apply(logits)
    lp.flush_metrics()
    assert looked == [2] * 8
    assert metrics.counts().get(metrics.BLOCKED_TOKENS_TOTAL, 0) - before == 64


def test_a_json_reply_opens_as_json_or_as_the_calls(grammar_store, kimi_tokenizer, m):
    """With a JSON ``response_format`` beside the tools, the first row of the
    text is the reply grammar's plus the section's opening, both batch-filled
    with the argument rows."""
    reply = {"type": "object", "properties": {"n": {"type": "integer"}}}
    spec, _ = build_spec(
        [DeclaredTool("get_weather", WEATHER)], first_index=0, reply=reply
    )
    with_reply = SamplingParams(extra_args={SPEC_KEY: spec.to_json()})
    in_args = kimi_tokenizer.encode(
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        "<|tool_call_argument_begin|>",
        add_special_tokens=False,
    )
    lp = processor(grammar_store)
    lp.update_state(
        update(added=[(0, with_reply, [1], []), (1, params(), [1], in_args)])
    )
    logits = torch.randn(2, V)
    lp.apply(logits)
    texts = {
        kimi_tokenizer.decode([t]) for t in finite(logits[0]) if t < m.section_begin
    }
    assert m.section_begin in finite(logits[0])
    assert not finite(logits[0]) & set(m.stops)
    assert texts and all(t.lstrip().startswith("{") or not t.strip() for t in texts)
    args = {kimi_tokenizer.decode([t]) for t in finite(logits[1])}
    assert all(t.lstrip().startswith("{") or not t.strip() for t in args), args


@pytest.mark.parametrize(
    ("mode", "argv", "at_start"),
    [
        ("auto", ["vllm", "serve", "m", "--tool-call-parser", "kimi_k2_robust"], True),
        ("auto", ["vllm", "serve", "m", "--tool-call-parser=kimi_k2_robust"], True),
        ("auto", ["vllm", "serve", "m", "--tool-call-parser", "kimi_k2"], False),
        ("auto", ["python", "-m", "my_offline_job"], False),
        ("eager", ["vllm", "serve", "m", "--tool-call-parser", "kimi_k2"], True),
        ("lazy", ["vllm", "serve", "m", "--tool-call-parser", "kimi_k2_robust"], False),
    ],
)
def test_vocabulary_tables_are_built_only_where_they_are_used(
    monkeypatch, mode, argv, at_start
) -> None:
    """A server that does not serve kimi_k2_robust builds no tables at start-up;
    the first request that carries a spec starts them wherever they are not."""
    monkeypatch.setenv("KIMI_TOOLS_VOCAB_TABLES", mode)
    monkeypatch.setattr("sys.argv", argv)
    config = SimpleNamespace(
        model_config=SimpleNamespace(skip_tokenizer_init=True, get_vocab_size=lambda: V)
    )
    lp = KimiToolEnforcer(config, torch.device("cpu"), False)
    assert lp._loader._started is at_start
    assert lp._new_request(SamplingParams(max_tokens=4)) is None
    assert lp._loader._started is at_start  # an unenforced request: nothing
    assert lp._new_request(params()) is not None
    assert lp._loader._started
    assert lp._loader.get() is None and lp._loader.problem == "no tokenizer"


def test_the_vocabulary_tables_are_kept_out_of_full_collections(
    monkeypatch, kimi_tokenizer
) -> None:
    """Built after vLLM froze its start-up heap, the tables are frozen too:
    a full collection does not walk their objects."""
    import gc

    import vllm_kimi_tools.enforcer.logits_processor as lpm

    monkeypatch.setenv("KIMI_TOOLS_VOCAB_TABLES", "eager")
    monkeypatch.setattr(lpm, "tokenizer_for", lambda config: kimi_tokenizer)
    config = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: V))
    frozen = gc.get_freeze_count()
    try:
        store = KimiToolEnforcer(config, torch.device("cpu"), False)._loader.get()
        assert store is not None
        assert gc.get_freeze_count() > frozen + 100_000
        collected = {id(o) for o in gc.get_objects()}
        table = store.table
        for part in (table.token_bytes, table._by_bytes, table.lengths, table.quotes):
            assert gc.is_tracked(part) and id(part) not in collected
    finally:
        gc.unfreeze()


def test_a_bad_vocabulary_tables_setting_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("KIMI_TOOLS_VOCAB_TABLES", "sometimes")
    config = SimpleNamespace(model_config=SimpleNamespace(skip_tokenizer_init=True))
    with pytest.raises(ValueError, match="KIMI_TOOLS_VOCAB_TABLES='sometimes'"):
        KimiToolEnforcer(config, torch.device("cpu"), False)


def test_the_gpu_plan_masks_a_batch_as_the_cpu_plan(
    grammar_store, kimi_tokenizer, monkeypatch
) -> None:
    """The processor with the one-bitmask plan a GPU gets (forced here on CPU
    tensors) masks every step of a mixed batch (free text, call headers,
    arguments, a row it does not enforce) exactly as with the CPU plan."""
    import functools

    from kimi_testbed.wire import call, section
    from vllm_kimi_tools.enforcer import logits_processor as lp_module
    from vllm_kimi_tools.enforcer.masks import MaskPlan

    scripts = [
        kimi_tokenizer.encode(text, add_special_tokens=False)
        for text in (
            "Let me look." + section(call("get_weather", {"city": "Oslo"}, 0)),
            section(call("get_weather", {"city": "Ulan Bator"}, 0)) + "<|im_end|>",
            "It is sunny in Oslo today, and warm.<|im_end|>",
        )
    ]
    outs: list[list[list[int]]] = [[[] for _ in scripts] for _ in range(2)]
    procs = [processor(grammar_store), processor(grammar_store)]
    for lp, out in zip(procs, outs):
        added = [(i, params(), [1], out[i]) for i in range(len(scripts))]
        added.append((3, SamplingParams(), [1], []))  # not enforced
        lp.update_state(update(added=added, size=4))
    rng = np.random.default_rng(2)
    gpu_plan = functools.partial(MaskPlan, one_bitmask=True)
    for step in range(max(map(len, scripts))):
        values = torch.from_numpy(rng.standard_normal((4, V)).astype(np.float32))
        masked = []
        for lp, plan in zip(procs, (MaskPlan, gpu_plan)):
            monkeypatch.setattr(lp_module, "MaskPlan", plan)
            logits = values.clone()
            lp.apply(logits)
            masked.append(logits)
        assert torch.equal(masked[0], masked[1]), step
        assert torch.equal(masked[1][3], values[3])
        for out in outs:
            for i, script in enumerate(scripts):
                if step < len(script):
                    out[i].append(script[step])
    assert not any(req.stood_down for lp in procs for req in lp._requests.values())
