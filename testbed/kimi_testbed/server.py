# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Start and stop a real ``vllm serve`` on CPU for the test-bed model.

Settings that make vLLM start in ~20 s on a 2-core machine: eager mode, the
engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), a small KV cache,
offline hub access.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PUPPET = "kimi_testbed.puppet:PuppetLogitsProcessor"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(cache_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env.update(
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CACHE_ROOT=str(cache_dir / "vllm"),
        VLLM_NO_USAGE_STATS="1",
        VLLM_LOGGING_LEVEL=env.get("VLLM_LOGGING_LEVEL", "INFO"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(cache_dir / "hf"),
    )
    env.update(extra or {})
    return env


class VllmServer:
    """``vllm serve MODEL`` as a child process, with its log in ``log_path``."""

    def __init__(
        self,
        model: str | Path,
        args: Sequence[str] = (),
        *,
        cache_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        from kimi_testbed.tinykimi import needs_remote_code

        self.model = str(model)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        vllm_bin = shutil.which("vllm", path=str(Path(sys.executable).parent))
        cmd = [
            vllm_bin or "vllm",
            "serve",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enforce-eager",
            "--max-model-len",
            "4096",
            "--kv-cache-memory-bytes",
            str(256 * 2**20),
            "--served-model-name",
            "tinykimi",
            *(["--trust-remote-code"] if needs_remote_code(model) else []),
            *args,
        ]
        self.cmd = cmd
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(cache_dir, env),
            start_new_session=True,
        )
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"vllm serve exited with {self._proc.returncode}; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vllm serve not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def post(self, path: str, body: dict[str, Any], timeout: float = 120) -> Any:
        """POST JSON; returns (status, parsed JSON or raw text)."""
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def stream(self, path: str, body: dict[str, Any], timeout: float = 120) -> list:
        """POST with ``stream: true``; returns the decoded SSE events."""
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps({**body, "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        events = []
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                events.append(json.loads(data))
        return events

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.base_url}{path}", timeout=30) as resp:
            return resp.read().decode()

    def tokenize(self, text: str) -> list[int]:
        status, body = self.post(
            "/tokenize",
            {"model": "tinykimi", "prompt": text, "add_special_tokens": False},
        )
        if status != 200:
            raise RuntimeError(f"/tokenize failed: {status} {body}")
        return body["tokens"]

    def stop(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log.close()

    def __enter__(self) -> VllmServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
