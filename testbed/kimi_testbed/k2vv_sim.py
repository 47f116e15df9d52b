# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The K2VV simulation: scenarios through real ``vllm serve``, scored.

Each server configuration serves the test-bed model with the puppet; every
:class:`~kimi_testbed.scenarios.Scenario` is sent as one Chat
Completions request (streamed or not) and its reply is scored with K2VV's
rules (:mod:`.k2vv`) plus ours. A reply fails with one or more of:

* ``schema error``: K2VV rejects it (``finish_reason == "tool_calls"`` with an
  undeclared tool, arguments that are not JSON or fail the schema, or no call);
* ``bad id``: an id that is not ``functions.NAME:IDX`` counting from the
  history, or a duplicate;
* ``markup leaked``: Kimi markup in ``content`` or ``reasoning``;
* ``call lost``: the model wrote a call and no ``tool_calls`` came back;
* ``altered``: a correct (BFCL) call, its content or its reasoning came back
  different;
* ``http error``: the server did not answer 200.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kimi_testbed.k2vv import (
    ID_PROBLEMS,
    MARKUP_PROBLEM,
    accumulate_stream,
    check_message,
)
from kimi_testbed.responses_api import (
    accumulate_events,
    chat_message,
    responses_body,
)
from kimi_testbed.scenarios import CLOSERS, Scenario
from kimi_testbed.server import PUPPET, VllmServer
from vllm_kimi_tools import tokens

# name -> (label, vllm serve arguments, environment)
CONFIGS: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "stock_default": (
        "stock kimi_k2 (default flags)",
        ["--tool-call-parser", "kimi_k2", "--reasoning-parser", "kimi_k2"],
        {},
    ),
    "stock_strict": (
        "stock kimi_k2 --tool-strict-level parameter",
        [
            "--tool-call-parser",
            "kimi_k2",
            "--reasoning-parser",
            "kimi_k2",
            "--tool-strict-level",
            "parameter",
        ],
        {},
    ),
    "robust": (
        "kimi_k2_robust (default)",
        [
            "--tool-call-parser",
            "kimi_k2_robust",
            "--reasoning-parser",
            "kimi_k2_robust",
        ],
        {},
    ),
}
FAILURE_TAGS = (
    "schema error",
    "bad id",
    "markup leaked",
    "call lost",
    "altered",
    "http error",
)
# Tokens the model may need beyond its script when a mask steers it (the
# tiny model fills in what the puppet cannot, e.g. keys it never intended).
MAX_TOKENS_MARGIN = 128


def start_server(
    config: str, model: Path, cache: Path, log_dir: Path, tag: str = ""
) -> VllmServer:
    _, args, env = CONFIGS[config]
    return VllmServer(
        model,
        ["--enable-auto-tool-choice", *args, "--logits-processors", PUPPET],
        cache_dir=cache,
        log_path=log_dir / f"k2vv-{config}{'-' + tag if tag else ''}.log",
        env=env,
    )


@dataclass
class Result:
    """One scenario's reply, scored."""

    scenario: str
    category: str
    stream: bool
    thinking: bool
    status: int
    finish_reason: str | None
    k2vv_valid: bool | None
    calls: int
    failures: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    completion_tokens: int = 0
    message: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


class Simulation:
    """Sends scenarios to one server (tokenizations are cached per text)."""

    def __init__(self, server: VllmServer) -> None:
        self.server = server
        self._tokens: dict[str, list[int]] = {}
        self.closers = [self.tokenize(t)[0] for t in CLOSERS]

    def tokenize(self, text: str) -> list[int]:
        if text not in self._tokens:
            self._tokens[text] = self.server.tokenize(text)
        return self._tokens[text]

    def request(self, scenario: Scenario) -> dict[str, Any]:
        script = self.tokenize(scenario.output + tokens.IM_END)
        if scenario.truncate_after is not None:
            assert scenario.output.startswith(scenario.truncate_after)
            max_tokens = len(self.tokenize(scenario.truncate_after))
        else:
            max_tokens = len(script) + MAX_TOKENS_MARGIN
        return scenario.body(script, self.closers, max_tokens)

    def run(self, scenario: Scenario) -> Result:
        if scenario.api == "responses":
            return self._run_responses(scenario)
        body = self.request(scenario)
        start = time.perf_counter()
        if scenario.stream:
            body["stream_options"] = {"include_usage": True}
            try:
                events = self.server.stream("/v1/chat/completions", body, timeout=600)
            except OSError as e:  # HTTPError included
                return _http_error(scenario, getattr(e, "code", 0), str(e))
            latency = time.perf_counter() - start
            message, finish_reason = accumulate_stream(events)
            usage = next((e["usage"] for e in reversed(events) if e.get("usage")), {})
        else:
            status, reply = self.server.post("/v1/chat/completions", body, timeout=600)
            latency = time.perf_counter() - start
            if status != 200:
                return _http_error(scenario, status, str(reply)[:300])
            choice = reply["choices"][0]
            message, finish_reason = choice["message"], choice["finish_reason"]
            usage = reply.get("usage") or {}
        result = judge(scenario, message, finish_reason)
        result.latency_s = latency
        result.completion_tokens = int(usage.get("completion_tokens") or 0)
        return result

    def _run_responses(self, scenario: Scenario) -> Result:
        body = responses_body(self.request(scenario))
        start = time.perf_counter()
        if scenario.stream:
            try:
                events = self.server.stream("/v1/responses", body, timeout=600)
            except OSError as e:
                return _http_error(scenario, getattr(e, "code", 0), str(e))
            message, finish_reason = accumulate_events(events)
            final = next(
                (e["response"] for e in reversed(events) if e.get("response")), {}
            )
        else:
            status, final = self.server.post("/v1/responses", body, timeout=600)
            if status != 200:
                return _http_error(scenario, status, str(final)[:300])
            message, finish_reason = chat_message(final)
        result = judge(scenario, message, finish_reason)
        result.latency_s = time.perf_counter() - start
        usage = final.get("usage") or {}
        result.completion_tokens = int(usage.get("output_tokens") or 0)
        return result

    def run_all(
        self, scenarios: list[Scenario], concurrency: int = 8
    ) -> tuple[list[Result], float]:
        """All scenarios, ``concurrency`` at a time; returns results, wall s."""
        for scenario in scenarios:  # tokenize outside the timed part
            self.request(scenario)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(self.run, scenarios))
        return results, time.perf_counter() - start


def _http_error(scenario: Scenario, status: int, why: str) -> Result:
    return Result(
        scenario.id,
        scenario.category,
        scenario.stream,
        scenario.thinking,
        status,
        None,
        None,
        0,
        ["http error"],
        [why],
    )


def _same_arguments(got: str, want: dict[str, Any]) -> bool:
    try:
        return json.loads(got) == want
    except ValueError:
        return False


def judge(
    scenario: Scenario, message: dict[str, Any], finish_reason: str | None
) -> Result:
    """Score one reply: K2VV's verdict plus our checks (module docstring)."""
    calls = message.get("tool_calls") or []
    verdict = check_message(
        message, finish_reason, scenario.tools, scenario.history_calls
    )
    result = Result(
        scenario.id,
        scenario.category,
        scenario.stream,
        scenario.thinking,
        200,
        finish_reason,
        verdict.k2vv_valid,
        len(calls),
        details=list(verdict.problems),
        message=message,
    )
    tags = result.failures
    if verdict.k2vv_valid is False:
        tags.append("schema error")
    if any(p.startswith(ID_PROBLEMS) for p in verdict.problems):
        tags.append("bad id")
    if any(p.startswith(MARKUP_PROBLEM) for p in verdict.problems):
        tags.append("markup leaked")
    if scenario.intends_call and not calls:
        tags.append("call lost")
    if scenario.expected_calls is not None:
        got = [(c["function"]["name"], c["function"]["arguments"] or "") for c in calls]
        same_calls = len(got) == len(scenario.expected_calls) and all(
            name == want_name and _same_arguments(args, want_args)
            for (name, args), (want_name, want_args) in zip(
                got, scenario.expected_calls
            )
        )
        content = message.get("content") or ""
        reasoning = message.get("reasoning") or message.get("reasoning_content")
        if (
            not same_calls
            or content != (scenario.expected_content or "")
            or (reasoning or None) != scenario.expected_reasoning
        ):
            tags.append("altered")
            result.details.append(
                f"got calls {got}, content {content!r}, reasoning {reasoning!r}"
            )
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[Result], wall_s: float) -> dict[str, Any]:
    """K2VV's numbers (finish reasons, schema_accuracy, successful calls)
    and ours (failures by tag and by failure mode, latency, tokens/s)."""
    finish = Counter(str(r.finish_reason) for r in results if r.status == 200)
    tool_calls = [r for r in results if r.finish_reason == "tool_calls"]
    valid = sum(bool(r.k2vv_valid) for r in tool_calls)
    by_category: dict[str, dict[str, Any]] = {}
    for r in results:
        row = by_category.setdefault(r.category, {"n": 0, "failed": 0, "tags": {}})
        row["n"] += 1
        row["failed"] += not r.ok
        for tag in r.failures:
            row["tags"][tag] = row["tags"].get(tag, 0) + 1
    correct = [r for r in results if r.category.startswith("correct")]
    latencies = [r.latency_s for r in results if r.status == 200]
    completion = sum(r.completion_tokens for r in results)
    return {
        "requests": len(results),
        "finish_reasons": dict(finish),
        "k2vv": {
            "finish_tool_calls": len(tool_calls),
            "successful_tool_calls": valid,
            "schema_accuracy": valid / len(tool_calls) if tool_calls else None,
        },
        "failed_responses": sum(not r.ok for r in results),
        "failures": {t: sum(t in r.failures for r in results) for t in FAILURE_TAGS},
        "correct": {
            "n": len(correct),
            "altered": sum("altered" in r.failures for r in correct),
            "failed": sum(not r.ok for r in correct),
        },
        "by_category": by_category,
        "latency_p50_s": statistics.median(latencies) if latencies else 0.0,
        "latency_p95_s": percentile(latencies, 0.95),
        "completion_tokens": completion,
        "wall_s": wall_s,
        "tokens_per_s": completion / wall_s if wall_s else 0.0,
    }


def result_rows(results: list[Result]) -> list[dict[str, Any]]:
    """Per-scenario rows for the JSON report (messages left out when ok)."""
    rows = []
    for r in results:
        row = asdict(r)
        if r.ok:
            row.pop("message")
        rows.append(row)
    return rows
