# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Per-tool argument grammars: compiled with xgrammar, off the decode path.

One grammar per *tool schema* (not per tool set): a request's tools are
queued for compilation when it is admitted, on a background thread, and each
compiled grammar is cached, so another request with an overlapping tool set
pays nothing. xgrammar releases the GIL while it compiles, so decoding goes
on. The cache is bounded (``KIMI_TOOLS_GRAMMAR_CACHE_MB``, default 512).

A call whose header names its tool moves that grammar ahead of the queue
(:meth:`GrammarStore.hurry`, a second thread); a call that reaches its
arguments before its grammar is ready waits for it,
at most ``KIMI_TOOLS_COMPILE_WAIT_S`` seconds (default 5); then
:class:`GrammarNotReady` is raised (the Enforcer stands down for that
request) and later requests do not wait for that grammar until it is ready.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import xgrammar as xgr

from vllm_kimi_tools import envs
from vllm_kimi_tools.enforcer.schemas import ANY_OBJECT
from vllm_kimi_tools.enforcer.vocab import TokenTable, tokenizer_special_ids

# The same text prepare_schema gives a `strict: false` tool: one cache entry.
ANY_OBJECT_KEY = json.dumps(ANY_OBJECT, separators=(",", ":"))


class GrammarNotReady(RuntimeError):
    """A grammar still compiling after the decode step's wait."""


@dataclass
class CompileStats:
    compiles: int = 0
    compile_seconds: float = 0.0
    cache_hits: int = 0
    failures: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    timeouts: int = 0


class GrammarStore:
    """Compiles and caches argument grammars for one tokenizer."""

    def __init__(
        self,
        table: TokenTable,
        tokenizer_info: xgr.TokenizerInfo,
        *,
        cache_bytes: int | None = None,
        threads: int | None = None,
        wait_s: float | None = None,
    ) -> None:
        if cache_bytes is None:
            cache_bytes = envs.KIMI_TOOLS_GRAMMAR_CACHE_MB * (1 << 20)
        if wait_s is None:
            wait_s = envs.KIMI_TOOLS_COMPILE_WAIT_S
        self.wait_s = wait_s
        threads = threads or max(1, min(8, (os.cpu_count() or 2) // 2))
        self.table = table
        self._compiler = xgr.GrammarCompiler(
            tokenizer_info,
            max_threads=threads,
            cache_enabled=True,
            cache_limit_bytes=cache_bytes,
        )
        self._budget = cache_bytes
        self._lock = threading.Lock()
        self._ready: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._ready_bytes = 0
        self._pending: dict[str, Future[xgr.CompiledGrammar]] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kimi-enforcer-compile")
        # A grammar needed now while the queue is busy compiles here.
        self._urgent_pool = ThreadPoolExecutor(
            1, thread_name_prefix="kimi-enforcer-compile-now"
        )
        self._urgent: dict[str, Future[xgr.CompiledGrammar]] = {}
        self._slow: set[str] = set()  # waited for once already: no more waits
        self.stats = CompileStats()
        self.failed: dict[str, str] = {}
        self.any_object = self._compile(ANY_OBJECT_KEY)

    @classmethod
    def for_hf_tokenizer(
        cls, tokenizer: Any, vocab_size: int, **kw: Any
    ) -> GrammarStore:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        vocab = tokenizer.get_vocab()
        specials = tokenizer_special_ids(tokenizer, vocab_size)
        token_bytes = [
            b.encode() if isinstance(b, str) else b for b in info.decoded_vocab
        ]
        token_bytes += [b""] * (vocab_size - len(token_bytes))
        table = TokenTable.build(token_bytes[:vocab_size], vocab, specials)
        return cls(table, info, **kw)

    # -- compile -----------------------------------------------------------

    def prefetch(self, keys: Iterable[str]) -> None:
        """Queue compilation of grammars not compiled or queued yet."""
        with self._lock:
            for key in keys:
                if key in self._ready or key in self._pending or key in self.failed:
                    continue
                self._pending[key] = self._pool.submit(self._compile_and_store, key)

    def get(self, key: str, wait_s: float | None = None) -> xgr.CompiledGrammar:
        """The compiled grammar, waiting at most ``wait_s`` (default: the
        store's) for it; raises :class:`GrammarNotReady` past that.

        Falls back to "any JSON object" for a schema xgrammar cannot compile
        (already reported by :meth:`prefetch`'s worker).
        """
        with self._lock:
            grammar = self._ready.get(key)
            if grammar is not None:
                self._ready.move_to_end(key)
                self.stats.cache_hits += 1
                return grammar
            if key in self.failed:
                return self.any_object
            future = self._hurry_locked(key)
            slow = key in self._slow
        timeout = 0.0 if slow else self.wait_s if wait_s is None else wait_s
        start = time.perf_counter()
        try:
            grammar = future.result(timeout=timeout)
        except FutureTimeout:
            with self._lock:
                self._slow.add(key)
                self.stats.timeouts += 1
            raise GrammarNotReady(
                f"the argument grammar was not compiled within {timeout:g} s"
            ) from None
        except Exception:
            grammar = self.any_object
        finally:
            with self._lock:
                self.stats.waits += 1
                self.stats.wait_seconds += time.perf_counter() - start
        return grammar

    def hurry(self, key: str) -> None:
        """A grammar about to be needed (its call's header is being written):
        if it is still queued behind others, compile it now, aside."""
        with self._lock:
            if key not in self._ready and key not in self.failed:
                self._hurry_locked(key)

    def _hurry_locked(self, key: str) -> Future[xgr.CompiledGrammar]:
        future = self._pending.get(key)
        if future is None or not (future.running() or future.done()):
            # Not started (queued behind others): compile it now, aside.
            future = self._urgent.get(key)
            if future is None:
                future = self._urgent_pool.submit(self._compile_and_store, key)
                self._urgent[key] = future
        return future

    def _compile_and_store(self, key: str) -> xgr.CompiledGrammar:
        with self._lock:
            grammar = self._ready.get(key)
        if grammar is not None:
            return grammar
        try:
            grammar = self._compile(key)
        except Exception as e:  # xgrammar rejects some schemas (e.g. `false`)
            with self._lock:
                self.failed[key] = str(e)
                self.stats.failures += 1
                self._pending.pop(key, None)
                self._urgent.pop(key, None)
            return self.any_object
        with self._lock:
            if key not in self._ready:
                self._ready[key] = grammar
                self._ready_bytes += grammar.memory_size_bytes
            while self._ready_bytes > self._budget and len(self._ready) > 1:
                _, old = self._ready.popitem(last=False)
                self._ready_bytes -= old.memory_size_bytes
            self._pending.pop(key, None)
            self._urgent.pop(key, None)
            self._slow.discard(key)
        return grammar

    def _compile(self, key: str) -> xgr.CompiledGrammar:
        start = time.perf_counter()
        # Whitespace is bounded by the Enforcer itself: xgrammar's
        # max_whitespace_cnt makes in-string masks ~100x slower.
        grammar = self._compiler.compile_json_schema(
            key, any_whitespace=True, strict_mode=True
        )
        with self._lock:
            self.stats.compiles += 1
            self.stats.compile_seconds += time.perf_counter() - start
        return grammar

    def matcher(
        self, key: str, stops: Sequence[int] | None = None
    ) -> xgr.GrammarMatcher:
        """A matcher for one call's arguments, ended by ``<|tool_call_end|>``
        (or by one of ``stops``: a JSON reply ends the turn)."""
        return xgr.GrammarMatcher(
            self.get(key),
            override_stop_tokens=list(stops or [self.table.markers.call_end]),
        )

    @property
    def cache_size(self) -> tuple[int, int]:
        """Compiled grammars held, and their bytes (bounded by the budget)."""
        with self._lock:
            return len(self._ready), self._ready_bytes

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._urgent_pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["ANY_OBJECT_KEY", "CompileStats", "GrammarNotReady", "GrammarStore"]
