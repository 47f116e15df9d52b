# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's vendor verifier, run unmodified against the test bed.

``scripts/setup_kvv.sh`` installs the verifier's pytest suites
(``../shared/anchors/kvv-verifier``) in an environment of their own; this
module serves the test-bed model (Moonshot's real tokenizer, K2.5 rules) under
a configuration with the stand-in (:mod:`.standin`) in front of it, runs a
suite in a subprocess of that environment::

    python -m pytest tests/<suite> --base-url http://127.0.0.1:PORT/v1
        --smoke-model tinykimi --think-mode opensource [--thinking]
        --case-dir ../shared/anchors/walle/validator_cases --junitxml ...

and reads back every test's outcome from the JUnit XML. Nothing of the
verifier is copied or changed: it is a client of the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kimi_testbed.k2vv_sim import CONFIGS
from kimi_testbed.paths import cache_dir
from kimi_testbed.server import PUPPET, VllmServer
from kimi_testbed.standin import MODE_ENV, MODEL_ENV

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup_kvv.sh"
MIDDLEWARE = "kimi_testbed.standin.StandInMiddleware"
API_MIDDLEWARE = "vllm_kimi_tools.api.middleware.KimiApiMiddleware"
# The verifier asks for up to 32768 output tokens.
MAX_MODEL_LEN = 40960
# What each configuration adds to its k2vv_sim.CONFIGS flags here.
EXTRA_ARGS: dict[str, list[str]] = {"robust": ["--middleware", API_MIDDLEWARE]}
# suite key -> (verifier test path, extra pytest arguments)
TOOL_SCHEMA = "tests/tool_call_json_schema"
SUITES: dict[str, tuple[str, list[str]]] = {
    "tool_call_json_schema": (TOOL_SCHEMA, []),
    "tool_call_json_schema+thinking": (TOOL_SCHEMA, ["--thinking"]),
    "k3_features": ("tests/k3_features", []),
    "params": ("tests/params", []),
}


def shared_dir() -> Path:
    return Path(os.environ.get("KIMI_TOOLS_SHARED", REPO.parent / "shared"))


def walle_cases() -> Path:
    return shared_dir() / "anchors" / "walle" / "validator_cases"


def verifier_source() -> Path:
    return Path(
        os.environ.get("KIMI_TOOLS_KVV", shared_dir() / "anchors" / "kvv-verifier")
    )


def available() -> bool:
    return (verifier_source() / "uv.lock").is_file() and walle_cases().is_dir()


def setup() -> Path:
    """Install the verifier (idempotent); returns its directory."""
    env = {**os.environ, "KIMI_TOOLS_KVV": str(verifier_source())}
    env.setdefault("KIMI_TOOLS_CACHE", str(cache_dir()))
    done = subprocess.run(
        ["bash", str(SETUP)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"setup_kvv.sh failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def start_server(
    config: str, mode: str, model: Path, log_dir: Path, cache: Path | None = None
) -> VllmServer:
    """``config`` (a :data:`~.k2vv_sim.CONFIGS` key) with the stand-in in
    ``mode`` in front of the model."""
    _, args, env = CONFIGS[config]
    return VllmServer(
        model,
        [
            "--enable-auto-tool-choice",
            *args,
            "--logits-processors",
            PUPPET,
            "--middleware",
            MIDDLEWARE,
            *EXTRA_ARGS.get(config, []),
            "--max-model-len",
            str(MAX_MODEL_LEN),
        ],
        cache_dir=cache or cache_dir(),
        log_path=log_dir / f"kvv-{config}-{mode}.log",
        # Positions past the tiny model's 4096 are never reached: the
        # stand-in's replies are short.
        env={
            **env,
            MODE_ENV: mode,
            MODEL_ENV: str(model),
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1",
        },
    )


@dataclass(frozen=True)
class Outcome:
    """One verifier test's result."""

    test: str  # e.g. "k3_features/test_tool_choice.py::test_x[stream]"
    outcome: str  # passed | failed | skipped | error
    message: str = ""


def run_suite(
    verifier: Path,
    suite: str,
    base_url: str,
    out_dir: Path,
    *,
    extra: list[str] | None = None,
    timeout: float = 3600,
) -> list[Outcome]:
    """Run one suite of :data:`SUITES` against ``base_url``; every outcome."""
    path, args = SUITES[suite]
    xml = out_dir / f"{suite}.xml"
    out_dir.mkdir(parents=True, exist_ok=True)
    xml.unlink(missing_ok=True)
    cmd = [
        str(verifier.parent / "venv" / "bin" / "python"),
        "-m",
        "pytest",
        path,
        "-p",
        "no:cacheprovider",
        "-q",
        "--base-url",
        f"{base_url}/v1",
        "--api-key",
        "none",
        "--smoke-model",
        "tinykimi",
        "--think-mode",
        "opensource",
        "--case-dir",
        str(walle_cases()),
        f"--junitxml={xml}",
        *args,
        *(extra or []),
    ]
    if path == TOOL_SCHEMA:  # its own report option exists only there
        cmd += ["--tool-json-report", str(out_dir / f"{suite}.report.json")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIMI_")}
    with open(out_dir / f"{suite}.log", "wb") as log:
        subprocess.run(
            cmd,
            cwd=verifier,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
            check=False,
        )
    if not xml.exists():
        raise RuntimeError(f"{suite}: no JUnit XML; see {out_dir / (suite + '.log')}")
    return read_junit(xml)


def read_junit(xml: Path) -> list[Outcome]:
    outcomes = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").removeprefix("tests.").replace(".", "/")
        test = f"{module}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag == "failure" else tag
                # The assertion (the text also holds the test's source).
                message = (node.get("message") or node.text or "")[:2000]
                break
        outcomes.append(Outcome(test, outcome, message.strip()))
    return outcomes


def tally(outcomes: list[Outcome]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for o in outcomes:
        counts[o.outcome] += 1
    return counts


def as_dicts(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]


# -- why a test failed ------------------------------------------------------

FIXABLE = "fixable here"
NEEDS_VLLM = "needs vLLM"
MOONSHOT_POLICY = "Moonshot-only policy"
NEEDS_MODEL = "needs the real model"
NEEDS_K3 = "needs the K3 chat format"
STAND_IN = "stand-in artefact"
TEST_BED = "test-bed limit"
CATEGORIES = (
    FIXABLE,
    NEEDS_VLLM,
    MOONSHOT_POLICY,
    NEEDS_MODEL,
    NEEDS_K3,
    STAND_IN,
    TEST_BED,
)

# (test id pattern, message pattern, cause, category): the first match wins.
RULES: tuple[tuple[str, str, str, str], ...] = (
    (
        r"",
        r"ReadTimeout|timed out",
        "the verifier's client timed out (a slow answer on two shared cores)",
        TEST_BED,
    ),
    (
        r"tool_call_json_schema",
        r"tool schema rejected",
        "schema refused with an HTTP error",
        FIXABLE,
    ),
    (
        r"tool_call_json_schema",
        r"did not include tool_calls|had no tool_calls",
        "call dropped (200 without tool_calls)",
        FIXABLE,
    ),
    (
        r"tool_call_json_schema",
        r"arguments (do not match schema|are not valid JSON)",
        "arguments break the schema (not enforced)",
        FIXABLE,
    ),
    (
        r"test_tool_role_without_tool_call_id",
        r"",
        "tool message without tool_call_id accepted",
        FIXABLE,
    ),
    (
        r"test_json_schema_strict_non_boolean",
        r"",
        "non-boolean json_schema.strict accepted",
        FIXABLE,
    ),
    (
        r"test_tool_choice_without_tools_field_accepted",
        r"",
        "tool_choice without tools refused",
        FIXABLE,
    ),
    (
        r"test_dynamic_tools\.py",
        r"",
        "dynamic tools (tools in a message)",
        NEEDS_K3,
    ),
    (
        r"",
        r"expected reasoning_content|reasoning_content chunks",
        "no reasoning_content (vLLM writes reasoning)",
        FIXABLE,
    ),
    (
        r"prompt_tokens|test_response_format_with|tokenization",
        r"prompt_tokens",
        "prompt_tokens: Moonshot's own template is not public",
        NEEDS_MODEL,
    ),
    (
        r"test_thinking_effort\.py",
        r"effort",
        "thinking effort changes what the model writes",
        NEEDS_MODEL,
    ),
    (
        r"test_json_object|test_tool_choice_auto_may_not_call",
        r"",
        "what the model chooses to write (the stand-in always calls, or writes {})",
        STAND_IN,
    ),
    (
        r"test_params\.py",
        r"should be rejected",
        "fixed sampling parameters not enforced",
        MOONSHOT_POLICY,
    ),
)


def classify(outcome: Outcome) -> tuple[str, str]:
    """``(cause, category)`` of a failed test; ``("unclassified", "")``
    where no rule applies (a gap in :data:`RULES`)."""
    for test, message, cause, category in RULES:
        if re.search(test, outcome.test) and re.search(
            message, outcome.message, re.IGNORECASE
        ):
            return cause, category
    return "unclassified", ""
