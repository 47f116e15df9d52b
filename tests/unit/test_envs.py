# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
from __future__ import annotations

import pytest

from vllm_kimi_tools import envs
from vllm_kimi_tools.enforcer.spec import opted_out


def test_defaults(monkeypatch) -> None:
    for name in envs.environment_variables:
        monkeypatch.delenv(name, raising=False)
    assert envs.VLLM_KIMI_TOOLS_ENFORCER is True
    assert envs.VLLM_KIMI_TOOLS_STREAM_ARGUMENTS is True
    assert envs.VLLM_KIMI_TOOLS_NORMALIZE is True
    assert envs.VLLM_KIMI_TOOLS_GRAMMAR_CACHE_MB == 512
    assert envs.VLLM_KIMI_TOOLS_COMPILE_WAIT_S == 5.0
    assert envs.VLLM_KIMI_TOOLS_BLOCKED_SAMPLE == 32
    assert envs.VLLM_KIMI_TOOLS_LOG_INTERVAL == 10.0
    envs.validate()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", False), ("off", False), (" FALSE ", False), ("no", False)]
    + [("1", True), ("On", True), ("true", True), ("yes", True), ("", True)],
)
def test_switches_read_alike(monkeypatch, raw: str, value: bool) -> None:
    monkeypatch.setenv("VLLM_KIMI_TOOLS_NORMALIZE", raw)
    assert envs.VLLM_KIMI_TOOLS_NORMALIZE is value


def test_the_request_opt_out_reads_as_the_switches() -> None:
    for off in (False, 0, "0", "off", "False", " no "):
        assert opted_out(off), off
    for on in (None, True, 1, "1", "on", "yes"):
        assert not opted_out(on), on


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("VLLM_KIMI_TOOLS_ENFORCER", "maybe"),
        ("VLLM_KIMI_TOOLS_BLOCKED_SAMPLE", "every"),
        ("VLLM_KIMI_TOOLS_BLOCKED_SAMPLE", "-1"),
        ("VLLM_KIMI_TOOLS_COMPILE_WAIT_S", "nan"),
        ("VLLM_KIMI_TOOLS_GRAMMAR_CACHE_MB", "1.5"),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        envs.validate()


def test_an_unknown_setting_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        envs.VLLM_KIMI_TOOLS_NOPE  # noqa: B018
