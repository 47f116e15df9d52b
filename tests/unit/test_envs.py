# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
from __future__ import annotations

import pytest

from vllm_kimi_tools import envs
from vllm_kimi_tools.enforcer.spec import opted_out


def test_defaults(monkeypatch) -> None:
    for name in envs.environment_variables:
        monkeypatch.delenv(name, raising=False)
    assert envs.KIMI_TOOLS_ENFORCER is True
    assert envs.KIMI_TOOLS_STREAM_ARGUMENTS is True
    assert envs.KIMI_TOOLS_NORMALIZE is True
    assert envs.KIMI_TOOLS_GRAMMAR_CACHE_MB == 512
    assert envs.KIMI_TOOLS_COMPILE_WAIT_S == 5.0
    assert envs.KIMI_TOOLS_BLOCKED_SAMPLE == 32
    assert envs.KIMI_TOOLS_LOG_INTERVAL == 10.0
    envs.validate()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", False), ("off", False), (" FALSE ", False), ("no", False)]
    + [("1", True), ("On", True), ("true", True), ("yes", True), ("", True)],
)
def test_switches_read_alike(monkeypatch, raw: str, value: bool) -> None:
    monkeypatch.setenv("KIMI_TOOLS_NORMALIZE", raw)
    assert envs.KIMI_TOOLS_NORMALIZE is value


def test_the_request_opt_out_reads_as_the_switches() -> None:
    for off in (False, 0, "0", "off", "False", " no "):
        assert opted_out(off), off
    for on in (None, True, 1, "1", "on", "yes"):
        assert not opted_out(on), on


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("KIMI_TOOLS_ENFORCER", "maybe"),
        ("KIMI_TOOLS_BLOCKED_SAMPLE", "every"),
        ("KIMI_TOOLS_BLOCKED_SAMPLE", "-1"),
        ("KIMI_TOOLS_COMPILE_WAIT_S", "nan"),
        ("KIMI_TOOLS_GRAMMAR_CACHE_MB", "1.5"),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, name: str, raw: str) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError, match=name):
        envs.validate()


def test_an_unknown_setting_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        envs.KIMI_TOOLS_NOPE  # noqa: B018


def test_the_former_names_are_read_with_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.delenv("KIMI_TOOLS_NORMALIZE", raising=False)
    monkeypatch.setenv("VLLM_KIMI_TOOLS_NORMALIZE", "0")
    monkeypatch.setattr(envs, "_warned", set())
    with caplog.at_level("WARNING", logger=envs.logger.name):
        assert envs.KIMI_TOOLS_NORMALIZE is False
        assert envs.KIMI_TOOLS_NORMALIZE is False
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and "KIMI_TOOLS_NORMALIZE" in warnings[0].getMessage()
    monkeypatch.setenv("KIMI_TOOLS_NORMALIZE", "1")  # the new name wins
    assert envs.KIMI_TOOLS_NORMALIZE is True


def test_a_bad_former_value_names_the_former_variable(monkeypatch) -> None:
    monkeypatch.delenv("KIMI_TOOLS_BLOCKED_SAMPLE", raising=False)
    monkeypatch.setenv("VLLM_KIMI_TOOLS_BLOCKED_SAMPLE", "often")
    with pytest.raises(ValueError, match="VLLM_KIMI_TOOLS_BLOCKED_SAMPLE"):
        envs.validate()
