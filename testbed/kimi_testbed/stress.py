# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Hostile-input suite and soak through real ``vllm serve`` (CPU, loopback).

* :func:`run_hostile`: every :class:`~.hostile.HostileCase` once, then one
  ordinary request and ``/health``; ``/health`` is probed while the case
  runs. A server that died, or no longer serves, is recorded (with its log)
  and restarted, so the suite goes on.
* :func:`run_soak`: BFCL tools (1-20 per request), correct and incorrect
  intentions, streamed and not, 20 % of the clients closing the connection
  mid-stream, ``concurrency`` at a time, a SIGSTOP/SIGCONT of the server's
  process group mid-load; the server's process-tree RSS sampled every second
  over two identical rounds on one server; every returned call checked
  (declared, schema-valid, canonical id).

Used by ``benchmarks/bench_hostile.py``, ``benchmarks/bench_soak.py`` and
``tests/e2e/test_hostile_e2e.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import regex as re

from kimi_testbed.corpora import bfcl_cases
from kimi_testbed.hostile import (
    FETCH_TRAP,
    ORDINARY,
    HostileCase,
    check_choice,
    error_message,
    judge,
    stream_choices,
    tool_schemas,
)
from kimi_testbed.k2vv_sim import CONFIGS, percentile
from kimi_testbed.scenarios import (
    CLOSERS,
    THINK,
    THINK_END,
    call,
    dumps,
    section,
)
from kimi_testbed.server import PUPPET, VllmServer
from vllm_kimi_tools import tokens

# Long enough for 20 BFCL tools, a 2,000-value enum or 200 past calls.
MAX_MODEL_LEN = 16_384
SERVER_ENV = {
    "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1",  # the tiny model declares 4,096
    "KIMI_TOOLS_LOG_INTERVAL": "1",  # the Enforcer's summary every second
}
HEALTH_LIMIT_S = 5.0  # /health slower than this while a case runs: frozen
NEXT_TIMEOUT_S = 30.0


class WatchedServer(VllmServer):
    """A :class:`VllmServer` whose process can be watched and signalled."""

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def watch(self) -> None:
        """Remember the process tree as it is now (once ready): the API
        server and the engine core."""
        self._watched = self.tree()
        for proc in self._watched:
            process_label(proc)  # named while it runs

    def dead(self) -> list[str]:
        """Processes of the tree at :meth:`watch` that no longer run."""
        import psutil

        out = []
        if self._proc.poll() is not None:
            out.append(f"vllm serve exited with {self._proc.returncode}")
        for proc in getattr(self, "_watched", [])[1:]:
            try:
                gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            if gone:
                out.append(f"{process_label(proc)} died")
        return out

    def alive(self) -> bool:
        """The server and every process of its tree at :meth:`watch` run."""
        return not self.dead()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tree(self) -> list[Any]:
        """psutil processes: the server and its descendants."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal_tree(self, sig: int) -> None:
        """``sig`` to the server's process group, and to any descendant that
        left it."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return
        for proc in self.tree()[1:]:
            try:
                if os.getpgid(proc.pid) != self.pid:
                    os.kill(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def server_args(config: str) -> list[str]:
    _, args, _ = CONFIGS[config]
    return [
        "--enable-auto-tool-choice",
        *args,
        "--logits-processors",
        PUPPET,
        "--max-model-len",
        str(MAX_MODEL_LEN),
    ]


class Supervisor:
    """Keeps one server of ``config`` up: starts, watches, restarts it.

    Each incarnation logs to ``LOG_DIR/TAG-CONFIG-N.log``.
    """

    def __init__(
        self,
        config: str,
        model: Path,
        cache: Path,
        log_dir: Path,
        tag: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config, self.model, self.cache = config, model, cache
        self.log_dir, self.tag = log_dir, tag
        self.env = {**SERVER_ENV, **(env or {})}  # added to the server's
        self.starts = 0
        self.startup_s: list[float] = []
        self.restarts: list[str] = []
        self.server = self._start()
        self.closers = [self.server.tokenize(t)[0] for t in CLOSERS]
        self._tokens: dict[str, list[int]] = {}
        self.script(ORDINARY)  # ready while a server is down

    def _start(self) -> WatchedServer:
        start = time.perf_counter()
        server = WatchedServer(
            self.model,
            server_args(self.config),
            cache_dir=self.cache,
            log_path=self.log_dir / f"{self.tag}-{self.config}-{self.starts}.log",
            env=self.env,
        )
        server.watch()
        self.starts += 1
        self.startup_s.append(time.perf_counter() - start)
        return server

    def restart(self, why: str) -> None:
        self.restarts.append(why)
        self.server.signal_tree(signal.SIGCONT)  # a stopped server cannot exit
        self.server.stop()
        self.server = self._start()

    def tokenize(self, text: str) -> list[int]:
        if text not in self._tokens:
            self._tokens[text] = self.server.tokenize(text)
        return self._tokens[text]

    def script(self, case: HostileCase) -> list[int]:
        if case.intention is None or case.raw_body is not None:
            return []
        return self.tokenize(case.intention + tokens.IM_END)

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- HTTP ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None  # None: no HTTP answer
    body: Any  # parsed JSON, text, or the SSE events of a 200 stream
    seconds: float
    error: str | None = None  # transport error
    aborted: bool = False  # we closed the stream on purpose
    first_event_s: float | None = None
    event_s: list[float] = field(default_factory=list)  # each event's arrival


def post(
    base_url: str,
    path: str,
    data: bytes,
    *,
    timeout: float,
    stream: bool = False,
    abort_after: int | None = None,
) -> Reply:
    """POST ``data``; a 200 stream is read as SSE events (``abort_after``:
    close the connection after that many events). ``timeout`` bounds each
    socket wait and the whole exchange."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    start = time.perf_counter()
    deadline = start + timeout
    try:
        conn.request(
            "POST", path, body=data, headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        if resp.status != 200 or not stream:
            raw = resp.read().decode(errors="replace")
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            return Reply(resp.status, body, time.perf_counter() - start)
        events: list[dict[str, Any]] = []
        arrived: list[float] = []
        first = None
        for raw_line in resp:
            line = raw_line.decode(errors="replace").strip()
            if time.perf_counter() > deadline:
                return Reply(
                    None,
                    events,
                    time.perf_counter() - start,
                    f"stream over {timeout} s",
                )
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                events.append(json.loads(payload))
            except ValueError:
                events.append({"error": {"message": f"not JSON: {payload[:200]}"}})
            arrived.append(time.perf_counter() - start)
            if first is None:
                first = time.perf_counter() - start
            if abort_after is not None and len(events) >= abort_after:
                conn.close()  # the client goes away mid-stream
                return Reply(
                    200, events, time.perf_counter() - start, None, True, first
                )
        return Reply(
            200,
            events,
            time.perf_counter() - start,
            first_event_s=first,
            event_s=arrived,
        )
    except TimeoutError:
        return Reply(
            None, None, time.perf_counter() - start, f"no answer in {timeout} s"
        )
    except (OSError, http.client.HTTPException) as e:
        return Reply(
            None, None, time.perf_counter() - start, f"{type(e).__name__}: {e}"
        )
    finally:
        conn.close()


def health(base_url: str, timeout: float = 10.0) -> tuple[bool, float]:
    """(``/health`` answered 200, seconds it took)."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("GET", "/health")
        ok = conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        ok = False
    finally:
        conn.close()
    return ok, time.perf_counter() - start


class FetchTrap:
    """A loopback listener standing in for :data:`~.hostile.FETCH_TRAP`:
    records the first line of every request the server sends it."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.hits: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    first = conn.recv(300).decode(errors="replace").split("\r\n")[0]
                except OSError:
                    first = "(connected, sent nothing)"
                self.hits.append(first)

    def __enter__(self) -> FetchTrap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


class HealthProbe:
    """Polls ``/health`` in a thread while a case runs; keeps the worst."""

    def __init__(self, base_url: str, interval: float = 0.5) -> None:
        self.base_url, self.interval = base_url, interval
        self.worst_s = 0.0
        self.failures = 0
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            ok, seconds = health(self.base_url, timeout=HEALTH_LIMIT_S * 2)
            self.probes += 1
            self.failures += not ok
            self.worst_s = max(self.worst_s, seconds)
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the hostile suite ---------------------------------------------------------

_LOG_INTEREST = re.compile(
    r"error|exception|traceback|warning|killed|fatal|assert|raise|segmentation",
    re.IGNORECASE,
)


def _collapse(lines: list[str], period: int = 4) -> list[str]:
    """Runs of a repeated block of up to ``period`` lines, shown once."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        for p in range(1, period + 1):
            block = lines[i : i + p]
            repeats = 1
            while lines[i + repeats * p : i + (repeats + 1) * p] == block:
                repeats += 1
            if repeats > 2:
                out += [*block, f"[... the {p} line(s) above {repeats} times]"]
                i += repeats * p
                break
        else:
            out.append(lines[i])
            i += 1
    return out


def _traceback_digest(block: list[str]) -> list[str]:
    """A traceback's first line, this project's frames, its last frame and
    the exception."""
    keep = {0, *range(max(0, len(block) - 5), len(block))}
    for i, line in enumerate(block):
        if "vllm_kimi_tools" in line and line.lstrip().startswith("File"):
            keep.update((i, i + 1))
    out, last = [], -1
    for i in sorted(k for k in keep if k < len(block)):
        if i > last + 1:
            out.append("  [...]")
        out.append(block[i])
        last = i
    return out


def log_excerpt(text: str, n: int = 40) -> str:
    """What a case left in the server log: warnings and errors, tracebacks
    digested (this project's frames, the exception), repeats collapsed."""
    lines = _collapse(text.splitlines())
    picked: list[str] = []
    block: list[str] | None = None
    for line in lines:
        if "Traceback (most recent call last)" in line:
            block = [line]
            continue
        if block is not None:
            block.append(line)
            if line and not line[:1].isspace() and not line.startswith("["):
                picked += _traceback_digest(block)  # the exception line ends it
                block = None
            continue
        if _LOG_INTEREST.search(line):
            picked.append(line)
    if block:
        picked += _traceback_digest(block)
    if len(picked) > n:
        picked = [*picked[: n // 2], "[...]", *picked[-n // 2 :]]
    return "\n".join(line[:400] for line in picked)


@dataclass
class CaseResult:
    name: str
    group: str
    what: str
    issue: str
    status: int | None
    seconds: float
    next_ok: bool
    passed: bool
    problems: list[str] = field(default_factory=list)
    message: str = ""
    health_worst_s: float = 0.0
    invalid_calls: int = 0  # problems with the calls of a 200
    crashed: bool = False
    restarted: bool = False
    log_excerpt: str = ""
    # The documented degrade that explains a lost call (verified by its
    # counter); the case then passes with it named.
    degraded: str = ""

    @property
    def hang(self) -> bool:
        return self.status is None and not self.crashed


def _ordinary(sup: Supervisor) -> tuple[bool, str]:
    """One ordinary request and ``/health``: (served, why not)."""
    server = sup.server
    if not server.alive():
        return False, "server not running"
    reply = post(
        server.base_url,
        "/v1/chat/completions",
        ORDINARY.payload(sup.script(ORDINARY), sup.closers),
        timeout=NEXT_TIMEOUT_S,
    )
    verdict = judge(ORDINARY, reply.status, reply.body, reply.seconds, reply.error)
    ok, seconds = health(server.base_url)
    if not ok:
        verdict.problems.append(f"/health failed ({seconds:.1f} s)")
    return not verdict.problems, "; ".join(verdict.problems)


def run_case(sup: Supervisor, case: HostileCase) -> CaseResult:
    """Send ``case`` once, check the next request, restart if needed."""
    if not sup.server.alive():
        sup.restart(f"before {case.name}: not running")
    try:
        script = sup.script(case)
    except (OSError, RuntimeError) as e:  # /tokenize: the server is not serving
        sup.restart(f"before {case.name}: /tokenize failed ({e})")
        script = sup.script(case)
    server = sup.server
    data = case.payload(script, sup.closers)
    offset = server.log_size()
    before = engine_gauges(server.base_url) if case.degrade else {}
    with FetchTrap() as trap, HealthProbe(server.base_url) as probe:
        reply = post(
            server.base_url,
            "/v1/chat/completions",
            data.replace(FETCH_TRAP.encode(), trap.url.encode()),
            timeout=case.time_limit_s + 5,
            stream=case.stream,
        )
    verdict = judge(case, reply.status, reply.body, reply.seconds, reply.error)
    if trap.hits:
        verdict.problems.append(
            f"the server fetched a URL from the request: {'; '.join(trap.hits)}"
        )
    degraded = ""
    lost = [p for p in verdict.problems if p.startswith("call lost")]
    if case.degrade is not None and lost and lost == verdict.problems:
        metric = case.degrade.metric
        rose = engine_gauges(server.base_url).get(metric, 0.0) - before.get(metric, 0.0)
        if rose > 0:
            verdict.problems = []
            degraded = case.degrade.why
        else:
            verdict.problems.append(f"no documented degrade: {metric} did not rise")
    time.sleep(0.2)
    crashed = not server.alive()
    next_ok, why = (False, "server died") if crashed else _ordinary(sup)
    crashed = crashed or not server.alive()
    problems = list(verdict.problems)
    if crashed:
        problems.append(f"server died: {', '.join(server.dead())}")
    elif not next_ok:
        problems.append(f"next request not served: {why}")
    if probe.worst_s > HEALTH_LIMIT_S or (probe.failures and not crashed):
        problems.append(
            f"/health froze: worst {probe.worst_s:.1f} s, {probe.failures} failed "
            f"of {probe.probes}"
        )
    log = server.log_since(offset)
    result = CaseResult(
        case.name,
        case.group,
        case.what,
        case.issue,
        reply.status,
        reply.seconds,
        next_ok,
        not problems,
        problems,
        verdict.message[:300],
        probe.worst_s,
        len(verdict.call_problems),
        crashed,
        log_excerpt=log_excerpt(log, n=60 if crashed else 40) if problems else "",
        degraded=degraded,
    )
    if crashed or not next_ok:
        result.restarted = True
        sup.restart(f"after {case.name}: {'died' if crashed else 'not serving'}")
    return result


def run_hostile(
    sup: Supervisor, cases: list[HostileCase], progress: bool = False
) -> list[CaseResult]:
    results = []
    for case in cases:
        result = run_case(sup, case)
        results.append(result)
        if progress:
            print(
                f"{'PASS' if result.passed else 'FAIL'} {case.name}: "
                f"{result.status} {result.seconds:.1f}s next_ok={result.next_ok} "
                f"{'; '.join(result.problems)[:300]}",
                flush=True,
            )
    return results


def hostile_summary(results: list[CaseResult]) -> dict[str, Any]:
    return {
        "cases": len(results),
        "passed": sum(r.passed for r in results),
        "passed_with_degrade": sum(r.passed and bool(r.degraded) for r in results),
        "failed": [r.name for r in results if not r.passed],
        "crashes": sum(r.crashed for r in results),
        "hangs": sum(r.hang for r in results),
        "http_5xx": sum((r.status or 0) >= 500 for r in results),
        "next_not_served": sum(not r.next_ok for r in results),
        "health_froze": sum("/health froze" in " ".join(r.problems) for r in results),
        "invalid_calls": sum(r.invalid_calls > 0 for r in results),
        "restarts": sum(r.restarted for r in results),
        "statuses": dict(Counter(str(r.status) for r in results)),
    }


def case_rows(results: list[CaseResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


# -- the soak --------------------------------------------------------------------

FAILURE_MODES = (
    "wrong type",
    "missing required key",
    "extra key",
    "undeclared tool",
    "non-canonical id",
    "duplicate ids",
    "marker inside a string",
    "string-encoded arguments",
    "arguments not JSON",
    "text after the section",
    "truncated by max_tokens",
)
CORRECT = "correct"


@dataclass(frozen=True)
class SoakRequest:
    id: str
    kind: str  # CORRECT or a FAILURE_MODES entry
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    output: str  # what the model intends
    mode: str  # plain | stream | abort
    abort_after: int = 0  # abort: events read before closing
    thinking: bool = False
    truncate_after: str | None = None
    expected_calls: list[tuple[str, dict[str, Any]]] | None = None

    @property
    def intends_call(self) -> bool:
        return self.truncate_after is None


def _wrong(value: Any) -> Any:
    if isinstance(value, str):
        return 12345
    if isinstance(value, bool | int | float):
        return "not a number"
    return "oops"


def _incorrect(
    kind: str, calls: list[tuple[str, dict[str, Any]]], tools: list[dict[str, Any]]
) -> tuple[str, str | None]:
    """(output, truncate_after) for failure mode ``kind`` of a correct call."""
    name, args = calls[0]
    schema = next(
        t["function"]["parameters"] for t in tools if t["function"]["name"] == name
    )
    keys = list(args)
    strings = [k for k in keys if isinstance(args[k], str)]
    required = [k for k in schema.get("required") or [] if k in args]
    if kind == "wrong type" and keys:
        return section(
            call(name, dumps({**args, keys[0]: _wrong(args[keys[0]])}), 0)
        ), None
    if kind == "missing required key" and required:
        kept = {k: v for k, v in args.items() if k != required[0]}
        return section(call(name, dumps(kept), 0)), None
    if kind == "undeclared tool":
        return section(call("not_a_declared_tool", dumps(args), 0)), None
    if kind == "non-canonical id":
        return section(call("call_59adf3e1", dumps(args))), None
    if kind == "duplicate ids":
        return section(call(name, dumps(args), 0), call(name, dumps(args), 0)), None
    if kind == "marker inside a string" and strings:
        bad = {**args, strings[0]: f"{args[strings[0]]}{tokens.TOOL_CALL_END} x"}
        return section(call(name, dumps(bad), 0)), None
    if kind == "string-encoded arguments":
        return section(call(name, json.dumps(dumps(args)), 0)), None
    if kind == "arguments not JSON" and keys:
        text = "{" + ", ".join(f"{k}: {args[k]}" for k in keys) + "}"
        return section(call(name, text, 0)), None
    if kind == "text after the section":
        return section(call(name, dumps(args), 0)) + "I have called it.", None
    if kind == "truncated by max_tokens":
        text = dumps(args)
        prefix = f"{tokens.TOOL_CALLS_SECTION_BEGIN}{tokens.TOOL_CALL_BEGIN}"
        prefix += f"functions.{name}:0{tokens.TOOL_CALL_ARGUMENT_BEGIN}{text[:6]}"
        return section(call(name, text, 0)), prefix
    # "extra key", and the fallback of modes a call has nothing for.
    return section(call(name, dumps({**args, "zz_extra": 1}), 0)), None


def soak_plan(
    n: int,
    seed: int = 0,
    max_tools: int = 20,
    tools_chars: int = 14_000,
    abort_share: float = 0.2,
) -> list[SoakRequest]:
    """``n`` requests: BFCL questions with their tools plus distractor BFCL
    tools (1-20 in all, within ``tools_chars`` of JSON), half written
    correctly (ground truth, canonical ids), half in a failure mode; of the
    rest after ``abort_share`` (streamed and closed mid-way, 20 %), half
    plain and half streamed."""
    rng = random.Random(seed)
    pool = list(bfcl_cases())
    rng.shuffle(pool)
    distractors = [t for case in pool for t in case.tools]
    plan = []
    for i in range(n):
        case = pool[i % len(pool)]
        tools = list(case.tools)
        names = {t["function"]["name"] for t in tools}
        target = rng.randint(max(1, len(tools)), max(max_tools, len(tools)))
        size = len(json.dumps(tools))
        for extra in rng.sample(distractors, min(len(distractors), 4 * max_tools)):
            if len(tools) >= target:
                break
            name, cost = extra["function"]["name"], len(json.dumps(extra))
            if name in names or size + cost > tools_chars:
                continue
            tools.insert(rng.randint(0, len(tools)), extra)
            names.add(name)
            size += cost
        roll = rng.random()
        mode = (
            "abort"
            if roll < abort_share
            else "stream"
            if roll < (1 + abort_share) / 2
            else "plain"
        )
        kind = CORRECT if i % 2 == 0 else FAILURE_MODES[(i // 2) % len(FAILURE_MODES)]
        truncate = None
        if kind == CORRECT:
            preface = "I'll call the tool." if rng.random() < 0.3 else ""
            output = preface + section(
                *(call(nm, dumps(a), j) for j, (nm, a) in enumerate(case.calls))
            )
        else:
            output, truncate = _incorrect(kind, case.calls, tools)
        thinking = rng.random() < 0.25
        if thinking:
            output = THINK + "Which tool fits?" + THINK_END + output
            if truncate is not None:
                truncate = THINK + "Which tool fits?" + THINK_END + truncate
        plan.append(
            SoakRequest(
                id=f"{i:05d} {case.id}",
                kind=kind,
                tools=tools,
                messages=case.messages,
                output=output,
                mode=mode,
                abort_after=rng.randint(1, 4),
                thinking=thinking,
                truncate_after=truncate,
                expected_calls=case.calls if kind == CORRECT else None,
            )
        )
    return plan


@dataclass
class SoakOutcome:
    id: str
    kind: str
    mode: str
    status: str  # HTTP status, "timeout", "error" or "aborted"
    seconds: float
    calls: int = 0
    problems: list[str] = field(default_factory=list)
    altered: bool = False
    completion_tokens: int = 0


_LABELS: dict[int, str] = {}


def process_label(proc: Any) -> str:
    """``api server``, ``engine core`` or the process name, with its pid."""
    if proc.pid in _LABELS:
        return _LABELS[proc.pid]
    try:
        name = proc.name()
        cmdline = " ".join(proc.cmdline())
    except Exception:  # gone
        return f"gone {proc.pid}"
    if "EngineCore" in name or "EngineCore" in cmdline:
        kind = "engine core"
    elif "resource_tracker" in cmdline:
        kind = "resource tracker"
    elif " serve " in cmdline:
        kind = "api server"
    else:
        kind = name
    _LABELS[proc.pid] = f"{kind} ({proc.pid})"
    return _LABELS[proc.pid]


class RssSampler:
    """The server tree's RSS, every ``interval`` s, in a thread: the total
    and per process."""

    def __init__(self, server: WatchedServer, interval: float = 1.0) -> None:
        self.server, self.interval = server, interval
        self.samples: list[tuple[float, int]] = []  # (monotonic s, bytes)
        self.per_process: list[dict[str, int]] = []  # aligned with samples
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> dict[str, int]:
        """RSS per process, now."""
        out = {}
        for proc in self.server.tree():
            with contextlib.suppress(Exception):  # gone since listed
                out[process_label(proc)] = proc.memory_info().rss
        self.processes = max(self.processes, len(out))
        return out

    def sample(self) -> int:
        return sum(self.read().values())

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds per process, so far."""
        out = {}
        for proc in self.server.tree():
            with contextlib.suppress(Exception):
                times = proc.cpu_times()
                out[process_label(proc)] = times.user + times.system
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            per = self.read()
            self.samples.append((time.monotonic(), sum(per.values())))
            self.per_process.append(per)
            self._stop.wait(self.interval)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]

    def processes_between(self, start: float, end: float) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for (t, _), per in zip(self.samples, self.per_process):
            if start <= t <= end:
                for label, rss in per.items():
                    out.setdefault(label, []).append(rss)
        return out

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _soak_body(req: SoakRequest, sup: Supervisor) -> bytes:
    script = sup.tokenize(req.output + tokens.IM_END)
    if req.truncate_after is not None:
        max_tokens = len(sup.tokenize(req.truncate_after))
    else:
        max_tokens = len(script) + 128
    body: dict[str, Any] = {
        "model": "tinykimi",
        "messages": req.messages,
        "tools": req.tools,
        "max_tokens": max_tokens,
        "temperature": 0,
        "chat_template_kwargs": {"thinking": req.thinking},
        "vllm_xargs": {
            "puppet_script": script,
            "puppet_mode": "intend",
            "puppet_closers": sup.closers,
        },
    }
    if req.mode != "plain":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def _soak_one(
    req: SoakRequest, data: bytes, base_url: str, timeout: float
) -> SoakOutcome:
    reply = post(
        base_url,
        "/v1/chat/completions",
        data,
        timeout=timeout,
        stream=req.mode != "plain",
        abort_after=req.abort_after if req.mode == "abort" else None,
    )
    outcome = SoakOutcome(req.id, req.kind, req.mode, str(reply.status), reply.seconds)
    if reply.status is None:
        outcome.status = "timeout" if "no answer" in (reply.error or "") else "error"
        outcome.problems.append(reply.error or "no answer")
        return outcome
    if reply.aborted:
        outcome.status = "aborted"
        return outcome
    if reply.status != 200:
        outcome.problems.append(
            f"HTTP {reply.status}: {error_message(reply.body)[:200]}"
        )
        return outcome
    if req.mode == "plain":
        raw = reply.body.get("choices") if isinstance(reply.body, dict) else None
        choices = [(c.get("message") or {}, c.get("finish_reason")) for c in raw or []]
        errors: list[str] = []
    else:
        choices, errors = stream_choices(
            reply.body if isinstance(reply.body, list) else []
        )
    outcome.problems.extend(f"error event: {e:.200}" for e in errors)
    events = reply.body if isinstance(reply.body, list) else [reply.body]
    usage = next((e["usage"] for e in reversed(events) if e.get("usage")), {})
    outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
    schemas = tool_schemas(req.tools)
    for message, finish in choices:
        calls = message.get("tool_calls") or []
        outcome.calls += len(calls)
        outcome.problems.extend(check_choice(message, finish, schemas, 0))
        if req.intends_call and finish != "tool_calls":
            outcome.problems.append(f"call lost (finish_reason {finish})")
        if req.expected_calls is not None:
            got = []
            for c in calls:
                try:
                    args = json.loads(c["function"]["arguments"] or "")
                except ValueError:
                    args = None
                got.append((c["function"]["name"], args))
            outcome.altered = got != [(n, a) for n, a in req.expected_calls]
    return outcome


@dataclass
class Stop:
    """A SIGSTOP of the server mid-load."""

    at_done: int  # requests completed when it was sent
    in_flight: int
    seconds: float


def soak_round(
    sup: Supervisor,
    plan: list[SoakRequest],
    *,
    concurrency: int,
    timeout: float,
    stop_at: float | None,
    stop_s: float,
) -> tuple[list[SoakOutcome], float, list[Stop]]:
    """One pass of ``plan``; SIGSTOP the server once ``stop_at`` of it is done."""
    bodies = [_soak_body(req, sup) for req in plan]
    base_url = sup.server.base_url
    done = 0
    started = 0
    lock = threading.Lock()
    stops: list[Stop] = []
    finished = threading.Event()

    def task(i: int) -> SoakOutcome:
        nonlocal done, started
        with lock:
            started += 1
        outcome = _soak_one(plan[i], bodies[i], base_url, timeout)
        with lock:
            done += 1
        return outcome

    def stopper() -> None:
        assert stop_at is not None
        while not finished.is_set():
            with lock:
                reached = done >= stop_at * len(plan)
                at, flying = done, started - done
            if reached:
                sup.server.signal_tree(signal.SIGSTOP)
                start = time.perf_counter()
                time.sleep(stop_s)
                sup.server.signal_tree(signal.SIGCONT)
                stops.append(Stop(at, flying, time.perf_counter() - start))
                return
            finished.wait(0.1)

    thread = threading.Thread(target=stopper, daemon=True) if stop_at else None
    start = time.perf_counter()
    if thread:
        thread.start()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(task, range(len(plan))))
    finally:
        finished.set()
        if thread:
            thread.join()
        sup.server.signal_tree(signal.SIGCONT)  # never leave it stopped
    return outcomes, time.perf_counter() - start, stops


ENFORCER_LINE = re.compile(r"Kimi tool Enforcer: (?P<text>\d+ requests.*)$", re.M)
_FIELDS = {
    "requests": r"(\d+) requests",
    "blocked_steps": r"(\d+) blocked steps",
    "grammars_compiled": r"(\d+) grammars compiled",
    "compile_s": r"compiled in ([\d.]+) s",
    "cache_hits": r"\((\d+) cache hits\)",
    "stood_down": r"stood down (\d+)",
    "length_fallbacks": r"length fallbacks (\d+)",
    "grammars_held": r"holding (\d+) grammars",
    "grammar_cache_mib": r"grammars \(([\d.]+) MiB\)",
    "live_states": r"(\d+) live request states",
}
# What the soak needs from that line.
_WANTED = {
    "grammar cache size (entries or bytes)": "grammars_held",
    "live per-request states": "live_states",
}


def enforcer_state(log_text: str) -> dict[str, Any]:
    """The last Enforcer summary line in a server log, parsed; ``missing``
    lists what the soak wants from it that the line does not say."""
    lines = ENFORCER_LINE.findall(log_text)
    if not lines:
        return {"line": None, "missing": ["no Enforcer summary line in the log"]}
    text = lines[-1]
    fields: dict[str, Any] = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, text)
        if m:
            fields[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    missing = [what for what, key in _WANTED.items() if key not in fields]
    return {"line": text, "fields": fields, "missing": missing}


def engine_gauges(base_url: str) -> dict[str, float]:
    """vLLM's request gauges and the plugin's counters from ``/metrics``."""
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return {}
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if "_created" in line.split(" ")[0]:
            continue
        if line.startswith(
            (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm_kimi_tools:",
            )
        ):
            name, _, value = line.rpartition(" ")
            name = re.sub(r'engine="\d+",?|model_name="[^"]*",?', "", name)
            name = name.replace("{}", "")
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(value)
    return out


def round_summary(
    outcomes: list[SoakOutcome], wall_s: float, rss: list[int], stops: list[Stop]
) -> dict[str, Any]:
    finished = [o for o in outcomes if o.status == "200"]
    latencies = [o.seconds for o in finished]
    invalid = [o for o in outcomes if o.problems and o.status == "200"]
    return {
        "requests": len(outcomes),
        "statuses": dict(Counter(o.status for o in outcomes)),
        "http_5xx": sum(o.status.isdigit() and int(o.status) >= 500 for o in outcomes),
        "timeouts": sum(o.status == "timeout" for o in outcomes),
        "errors": sum(o.status == "error" for o in outcomes),
        "aborted": sum(o.status == "aborted" for o in outcomes),
        "modes": dict(Counter(o.mode for o in outcomes)),
        "calls_returned": sum(o.calls for o in outcomes),
        "responses_with_problems": len(invalid),
        "problem_examples": [(o.id, o.kind, o.problems[:3]) for o in invalid[:10]],
        "correct_altered": sum(o.altered for o in outcomes),
        "correct_n": sum(o.kind == CORRECT and o.status == "200" for o in outcomes),
        "latency_p50_s": statistics.median(latencies) if latencies else 0.0,
        "latency_p99_s": percentile(latencies, 0.99),
        "completion_tokens": sum(o.completion_tokens for o in outcomes),
        "wall_s": wall_s,
        "requests_per_s": len(outcomes) / wall_s if wall_s else 0.0,
        "rss_start_mb": rss[0] / 2**20 if rss else None,
        "rss_peak_mb": max(rss) / 2**20 if rss else None,
        "rss_end_mb": rss[-1] / 2**20 if rss else None,
        "sigstop": [asdict(s) for s in stops],
    }


def run_soak(
    sup: Supervisor,
    n: int,
    *,
    concurrency: int = 50,
    rounds: int = 2,
    seed: int = 0,
    timeout: float = 180.0,
    stop_at: float | None = 0.4,
    stop_s: float = 5.0,
    settle_s: float = 5.0,
    abort_share: float = 0.2,
    progress: bool = False,
) -> dict[str, Any]:
    """``rounds`` identical passes of a ``n``-request plan on one server."""
    plan = soak_plan(n, seed, abort_share=abort_share)
    with ThreadPoolExecutor(4) as pool:  # tokenize outside the timed part
        for req in plan:
            pool.submit(_soak_body, req, sup)
    server = sup.server
    summaries = []
    settled: list[float] = []
    with RssSampler(server) as sampler:
        baseline = sampler.sample()
        for r in range(rounds):
            start = time.monotonic()
            cpu_before = sampler.cpu_seconds()
            outcomes, wall, stops = soak_round(
                sup,
                plan,
                concurrency=concurrency,
                timeout=timeout,
                stop_at=stop_at,
                stop_s=stop_s,
            )
            end = time.monotonic()
            time.sleep(settle_s)  # let the aborted and finished requests go
            idle = sampler.between(end, time.monotonic())
            settled.append(statistics.median(idle) / 2**20 if idle else 0.0)
            summary = round_summary(outcomes, wall, sampler.between(start, end), stops)
            summary["rss_settled_mb"] = settled[-1]
            summary["rss_by_process_mb"] = {
                label: {
                    "start": values[0] / 2**20,
                    "peak": max(values) / 2**20,
                    "settled": values[-1] / 2**20,
                }
                for label, values in sampler.processes_between(
                    start, time.monotonic()
                ).items()
            }
            cpu_after = sampler.cpu_seconds()
            summary["cpu_s_by_process"] = {
                label: cpu_after[label] - cpu_before.get(label, 0.0)
                for label in cpu_after
            }
            summary["server_alive"] = server.alive()
            # One request after an idle second: the Enforcer logs its state
            # at the next decode step, with every soak request gone.
            time.sleep(1.5)
            summary["next_ok"], summary["next_why"] = _ordinary(sup)
            time.sleep(0.5)
            summary["enforcer"] = enforcer_state(
                server.log_path.read_text(errors="replace")
            )
            summaries.append(summary)
            if progress:
                print(f"round {r + 1}:", json.dumps(summary)[:1500], flush=True)
        samples = [(t - sampler.samples[0][0], rss) for t, rss in sampler.samples]
        processes = sampler.processes
    gauges = engine_gauges(server.base_url)
    settled_growth = [b / a - 1 if a else None for a, b in zip(settled, settled[1:])]
    peaks = [r["rss_peak_mb"] or 0.0 for r in summaries]
    peak_growth = [b / a - 1 if a else None for a, b in zip(peaks, peaks[1:])]
    growth = {
        # The target: the high-water mark of the last round over the one
        # before (any earlier round warms up). The settled value after a
        # round is reported too; it moves with when the allocator happens to
        # return freed memory (a few hundred MB either way).
        "peak": peak_growth[-1] if peak_growth else None,
        "settled": settled_growth[-1] if settled_growth else None,
        "peak_per_round": peak_growth,
        "settled_per_round": settled_growth,
    }
    totals = {
        key: sum(r[key] for r in summaries)
        for key in (
            "requests",
            "http_5xx",
            "timeouts",
            "errors",
            "aborted",
            "calls_returned",
            "responses_with_problems",
            "correct_altered",
        )
    }
    return {
        "requests_per_round": n,
        "abort_share": abort_share,
        "rounds": summaries,
        "concurrency": concurrency,
        "timeout_s": timeout,
        "rss_baseline_mb": baseline / 2**20,
        "rss_growth": growth,
        "rss_processes": processes,
        "rss_samples": [(round(t, 1), round(rss / 2**20, 1)) for t, rss in samples],
        "totals": totals,
        "enforcer": summaries[-1]["enforcer"],
        "engine_gauges": gauges,
        "after": {
            "next_ok": summaries[-1]["next_ok"],
            "why": summaries[-1]["next_why"],
            "server_alive": server.alive(),
        },
        "unique_tool_schemas": len(
            {
                json.dumps(t["function"].get("parameters"), sort_keys=True)
                for q in plan
                for t in q.tools
            }
        ),
    }
