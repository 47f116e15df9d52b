# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
from __future__ import annotations

import pytest

from vllm_kimi_tools.parser.tool_ids import (
    canonical_index,
    make_tool_call_id,
    resolve_tool_call_id,
    unsafe_tool_name,
)

DECLARED = ("get_weather", "get", "search", "search_web", "mcp:tool", "a.b-c", "v2")


@pytest.mark.parametrize(
    "raw, name",
    [
        pytest.param("functions.get_weather:0", "get_weather", id="canonical"),
        pytest.param("get_weather:12", "get_weather", id="no_prefix"),
        pytest.param("functions_get_weather_1", "get_weather", id="underscores"),
        pytest.param("functionsget_weather3", "get_weather", id="no_separators"),
        pytest.param("functions.get_weather", "get_weather", id="no_index"),
        pytest.param(" functions.search:2\n", "search", id="whitespace"),
        pytest.param("functions.search_web:0", "search_web", id="longest_wins"),
        pytest.param("search_web_3", "search_web", id="longest_wins_underscore"),
        pytest.param("functions.get:0", "get", id="prefix_of_other_name"),
        pytest.param("functions.mcp:tool:4", "mcp:tool", id="colon_in_name"),
        pytest.param("functions.a.b-c:1", "a.b-c", id="dot_dash_in_name"),
        pytest.param("functions.v2:0", "v2", id="digit_in_name"),
        pytest.param("functions.v20", "v2", id="digit_name_no_sep"),
    ],
)
def test_resolves_declared_names(raw: str, name: str) -> None:
    resolved = resolve_tool_call_id(raw, DECLARED)
    assert resolved.name == name
    assert not resolved.opaque


@pytest.mark.parametrize(
    "raw, guessed",
    [
        ("functions.img_gen:0", "img_gen"),
        ("delete_file:3", "delete_file"),
        ("functions.get_weather_x:0", "get_weather_x"),
        ("callback:0", "callback"),
    ],
)
def test_undeclared_names_are_not_resolved(raw: str, guessed: str) -> None:
    resolved = resolve_tool_call_id(raw, DECLARED)
    assert resolved.name is None
    assert not resolved.opaque
    assert resolved.guessed_name == guessed


@pytest.mark.parametrize(
    "raw",
    [
        "call_9f2c11ab",
        "call00003",
        "chatcmpl-tool-1234abcd",
        "3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f",
        "7",
    ],
)
def test_opaque_ids(raw: str) -> None:
    resolved = resolve_tool_call_id(raw, DECLARED)
    assert resolved.name is None
    assert resolved.opaque


def test_canonical_id_round_trip() -> None:
    assert make_tool_call_id("mcp:tool", 5) == "functions.mcp:tool:5"
    assert canonical_index("functions.mcp:tool:5") == 5
    assert canonical_index("search:5") is None
    assert canonical_index("functions.search") is None


@pytest.mark.parametrize(
    "name",
    ["<|tool_call_end|>", "a<|im_end|>", "x|>y", "<think>", "get weather", "f\n", ""],
)
def test_names_that_cannot_be_written_are_refused(name) -> None:
    assert unsafe_tool_name(name) is not None


@pytest.mark.parametrize("name", ["get_weather", "mcp:tool", "a.b-c", "搜索", "f<1>"])
def test_ordinary_names_are_kept(name) -> None:
    assert unsafe_tool_name(name) is None
