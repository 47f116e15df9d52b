# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer as a vLLM logits processor (V1 runner and Model Runner V2).

Installed through the ``vllm.logits_processors`` entry point, so vLLM loads it
for every model; it masks only requests to which the ``kimi_k2_robust``
parser attached an :class:`~.spec.EnforcerSpec`
(``SamplingParams.extra_args["kimi_tools_enforcer"]``), which it only does for
Kimi tokenizers. For a Kimi tokenizer it builds its vocabulary tables in a
background thread at start-up (:class:`_StoreLoader`); for any other it
builds nothing. One class serves both runner interfaces, because each runner
checks ``issubclass`` against its own base class and refuses the other's:

* V1 (``update_state(BatchUpdate)`` + ``apply(logits)``): reads the live
  ``output_tok_ids`` list of each request, and the tail of its
  ``prompt_tok_ids`` once;
* Model Runner V2 (``add_request(slot, params)`` + ``apply(logits, ctx)``):
  reads the newest token from ``ctx.input_ids``, the prompt's tail once and,
  after a preemption, the history from ``req_states.all_token_ids``.

The prompt's tail says where the output starts (:mod:`.prompt`):
K2.5+ generation prompts open (or open and close) the thinking themselves.

Per step it gathers every enforced row's directive into one
:class:`~.masks.MaskPlan` and applies it on the logits' own device: ban a few
ids (free text), keep a few ids (markers, call header), or an xgrammar
bitmask (arguments; xgrammar's CUDA/Triton kernel on GPU, its C++ kernel on
CPU).

**Containment.** Nothing a request does may take the engine down: every
per-request stage (reading its tokens, advancing its machine, its mask) runs
under its own guard, and an exception stands that request down (counted as
``stood_down{reason="error"}``, logged once with its traceback) while the
rest of the batch goes on. The per-step work is bounded too: schema walks
have a node budget (:mod:`.paths`), a grammar still compiling is
waited for a bounded time (:mod:`.grammars`).
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vllm_kimi_tools import envs, metrics
from vllm_kimi_tools._compat import (
    BatchUpdate,
    LogitsContext,
    LogitsProcRequestState,
    V1LogitsProcessor,
    V2LogitsProcessor,
    cli_tool_parser,
    init_logger,
    parallel_ranks,
    process_dict_updates,
    tokenizer_for,
)
from vllm_kimi_tools.enforcer.machine import Ban, Only, Phase, RequestEnforcer
from vllm_kimi_tools.enforcer.masks import (
    MaskPlan,
    apply_plan,
    first_choices,
    to_device,
)
from vllm_kimi_tools.enforcer.prompt import OutputStart, start_from_tail
from vllm_kimi_tools.enforcer.schema_checks import (
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    check_shape,
)
from vllm_kimi_tools.enforcer.spec import SPEC_KEY, EnforcerSpec
from vllm_kimi_tools.names import PARSER_NAME

logger = init_logger(__name__)


def spec_of(params: Any) -> EnforcerSpec | None:
    """The request's Enforcer spec (None: not enforced). Raises ValueError.

    vLLM also calls this at admission, in the API server (``validate_params``),
    so a malformed spec, or one whose length schema is too deep or too large
    to walk, is an HTTP 400 there, whoever wrote it.
    """
    extra = getattr(params, "extra_args", None) or {}
    text = extra.get(SPEC_KEY)
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{SPEC_KEY} must be a string")
    return _parse_spec(text)


@functools.lru_cache(maxsize=256)
def _parse_spec(text: str) -> EnforcerSpec:
    """A spec's text, parsed and checked (memoised: requests with the same
    tools and call index bring the same text; the spec is immutable and the
    walks read its schemas without changing them)."""
    spec = EnforcerSpec.from_json(text)
    for tool in spec.tools:
        if tool.lengths is not None:
            check_shape(
                tool.lengths,
                max_depth=MAX_SCHEMA_DEPTH * 2,
                max_nodes=MAX_SCHEMA_NODES * 2,
            )
    return spec


def _constrained_elsewhere(params: Any) -> bool:
    """Other masks on this request could leave nothing for ours to allow."""
    return bool(
        getattr(params, "structured_outputs", None) is not None
        or getattr(params, "allowed_token_ids", None)
        or getattr(params, "bad_words", None)
        or getattr(params, "logit_bias", None)
        or (getattr(params, "min_tokens", 0) or 0) > 0
    )


@dataclass
class _Request:
    spec: EnforcerSpec
    guarded: bool
    enforcer: RequestEnforcer | None = None  # built on first use
    output: list[int] | None = None  # V1: the runner's live list
    # The prompt's last n tokens, read once when the enforcer is built.
    prompt: Callable[[int], Sequence[int]] | None = None
    consumed: int = 0
    stood_down: bool = False
    # The enforcer's degrades already counted, by kind.
    degrades: dict[str, int] = field(default_factory=dict)


class _StoreLoader:
    """Builds the vocabulary tables and grammar compiler off the decode path:
    at start-up where this server serves ``kimi_k2_robust``, else (a server
    that never enforces need not pay for them) for the first request that
    carries a spec, which then waits for them once (a few seconds)."""

    def __init__(self, vllm_config: Any) -> None:
        self.store: Any = None
        self.problem: str | None = None
        self._done = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self._vllm_config = vllm_config
        mode = envs.KIMI_TOOLS_VOCAB_TABLES
        if mode == "eager" or (
            mode == "auto" and cli_tool_parser(sys.argv) == PARSER_NAME
        ):
            self.start()

    def start(self) -> None:
        """Start building, once."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(
            target=self._build, name="kimi-enforcer-init", daemon=True
        ).start()

    def _build(self) -> None:
        try:
            tokenizer = tokenizer_for(self._vllm_config)
            if tokenizer is None:
                self.problem = "no tokenizer"
                return
            from vllm_kimi_tools.tokens import missing_tool_tokens

            if missing_tool_tokens(tokenizer.get_vocab()):
                self.problem = "not a Kimi tokenizer"
                return
            from vllm_kimi_tools.enforcer.grammars import GrammarStore

            start = time.perf_counter()
            vocab_size = self._vllm_config.model_config.get_vocab_size()
            store = GrammarStore.for_hf_tokenizer(tokenizer, vocab_size)
            store.table.lengths  # noqa: B018 - build the length tables now
            store.table.quotes  # noqa: B018
            # vLLM freezes its start-up heap (EngineCore) so that full
            # collections skip it; these tables come later (~350,000 objects
            # the collector tracks): frozen too, or each full collection walks
            # them, 100-200 ms with the whole batch waiting.
            gc.freeze()
            self.store = store
            logger.info(
                "Kimi tool Enforcer: vocabulary tables built in %.1f s",
                time.perf_counter() - start,
            )
        except Exception as e:  # never take the engine down
            self.problem = f"{type(e).__name__}: {e}"
            logger.exception("Kimi tool Enforcer disabled: could not initialise")
        finally:
            self._done.set()

    def get(self) -> Any:
        self.start()
        self._done.wait()
        return self.store


class KimiToolEnforcer(V1LogitsProcessor, V2LogitsProcessor):
    """Constrains Kimi K2 tool calls to the request's declared tools."""

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        # V1: (vllm_config, device, is_pin_memory); V2: (vllm_config, req_states)
        self._v2_states: LogitsProcRequestState | None = (
            args[0] if len(args) == 1 else None
        )
        self._loader = _StoreLoader(vllm_config)
        self._requests: dict[int, _Request] = {}
        self._bitmask: np.ndarray | None = None
        self._batcher: Any = None  # xgrammar's BatchGrammarMatcher, on first use
        self._blocked: torch.Tensor | None = None
        envs.validate()
        # "Blocked steps" need the model's unmasked first choice: an argmax
        # over the whole vocabulary row, ~0.1 ms per row on CPU. Measured on
        # one row in this many and scaled (1: every row, 0: never).
        self._blocked_every = envs.KIMI_TOOLS_BLOCKED_SAMPLE
        self._steps = 0
        self._last_log = time.monotonic()
        self._log_interval = envs.KIMI_TOOLS_LOG_INTERVAL
        self._logged: dict[str, float] = {}  # the counts of the last line
        self._idle_log: threading.Timer | None = None
        # Tensor-parallel ranks see the same logits: rank 0 counts and logs.
        dp_rank, tp_rank = parallel_ranks(vllm_config)
        self._reports = metrics.report_engine(dp_rank, tp_rank)
        # (A dense model's DP engines are told DP=1: name the rank always.)
        self._log_suffix = f" (DP rank {dp_rank})"
        self._compile_s = 0.0  # compile seconds already counted
        self._warned: set[str] = set()
        # Rows where the length masks gave way to the grammar (a degrade).
        self.length_fallbacks = 0

    # -- both interfaces ---------------------------------------------------

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec_of(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False

    def _new_request(self, params: Any) -> _Request | None:
        try:
            spec = spec_of(params)
            if spec is None:
                return None
            self._loader.start()
            return _Request(spec, guarded=_constrained_elsewhere(params))
        except ValueError:
            return None  # refused at admission already
        except Exception as e:  # never take the engine down
            self._warn_once("error", "Kimi tool Enforcer ignored a request: %s", e)
            return None

    def _enforcer(self, req: _Request) -> RequestEnforcer:
        """The request's enforcer (phase OFF once it stood down)."""
        if req.enforcer is None:
            store = self._loader.get()
            if store is None:
                self._stand_down(req, f"unavailable ({self._loader.problem})")
            else:
                start = OutputStart.TEXT
                read, req.prompt = req.prompt, None
                try:
                    if read is not None:
                        start = start_from_tail(read, store.table.markers)
                except Exception as e:  # never guess where thinking is
                    self._stand_down(req, f"prompt: unreadable ({e})")
                    assert req.enforcer is not None
                    return req.enforcer
                try:
                    req.enforcer = RequestEnforcer(req.spec, store, start=start)
                except Exception as e:
                    self._contain(req, "start", e)
                    assert req.enforcer is not None
                    return req.enforcer
                metrics.inc(metrics.ENFORCED_REQUESTS_TOTAL)
        assert req.enforcer is not None
        return req.enforcer

    def _stand_down(
        self, req: _Request, reason: str, exc: BaseException | None = None
    ) -> None:
        """Stop enforcing ``req``; counted, and logged once per kind."""
        if req.stood_down:
            return
        req.stood_down = True
        try:
            if req.enforcer is None:
                req.enforcer = _OFF
            elif req.enforcer.phase is not Phase.OFF:
                req.enforcer.stop(reason)
        except Exception:  # a broken machine: replace it
            req.enforcer = _OFF
        label = reason.split(" ", 1)[0].rstrip(":")
        metrics.inc(metrics.STOOD_DOWN_TOTAL, 1, label)
        self._warn_once(
            label, "Kimi tool Enforcer stood down for a request: %s", reason, exc=exc
        )

    def _contain(self, req: _Request, stage: str, exc: BaseException) -> None:
        """An exception in one request's work: that request stands down."""
        from vllm_kimi_tools.enforcer.grammars import GrammarNotReady

        if isinstance(exc, GrammarNotReady):
            self._stand_down(req, f"compile: {exc}")
            return
        self._stand_down(
            req, f"error: {stage}: {type(exc).__name__}: {exc}"[:500], exc=exc
        )

    def _warn_once(
        self, kind: str, message: str, *args: Any, exc: BaseException | None = None
    ) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        if self._reports:
            text = message % args if args else message
            logger.warning("%s%s", text, self._log_suffix, exc_info=exc)

    def _accept(self, req: _Request, tokens: list[int]) -> None:
        try:
            self._accept_tokens(req, tokens)
        except Exception as e:  # contained to this request
            self._contain(req, "accept", e)

    def _accept_tokens(self, req: _Request, tokens: list[int]) -> None:
        enforcer = self._enforcer(req)
        if enforcer.phase is Phase.OFF:
            return
        for token in tokens:
            if token < 0:
                self._stand_down(
                    req,
                    "blind: the runner hides sampled tokens from entry-point "
                    "logits processors under async scheduling; start vLLM with "
                    "--no-async-scheduling or Model Runner V2",
                )
                return
            if not enforcer.accept(token):
                self._stand_down(req, f"rejected: {enforcer.off_reason}")
                return

    def _step_plan(self, logits: torch.Tensor) -> tuple[MaskPlan, np.ndarray]:
        """An empty plan for this step, and the bitmask (all ones) it uses."""
        width = (logits.shape[1] + 31) // 32
        if self._bitmask is None or self._bitmask.shape[0] < logits.shape[0]:
            self._bitmask = np.full((max(logits.shape[0], 8), width), -1, np.int32)
        # CUDA (and ROCm): every row through one bitmask and one kernel; CPU:
        # the rows that ban many tokens by bitwise passes (little-endian).
        device = logits.device.type
        plan = MaskPlan(
            one_bitmask=device == "cuda",
            bitwise=device == "cpu" and sys.byteorder == "little",
        )
        return plan, self._bitmask

    def _mask(
        self,
        logits: torch.Tensor,
        rows: list[tuple[int, _Request]],
        planned: tuple[MaskPlan, list[tuple[int, _Request]]] | None = None,
    ) -> None:
        """Apply each enforced row's directive to ``logits`` in place
        (``planned``: a plan for this step with some rows in it already, and
        those rows)."""
        if planned is None:
            plan, bitmask = self._step_plan(logits)
            active: list[tuple[int, _Request]] = []
        else:
            (plan, active), bitmask = planned, self._bitmask
            assert bitmask is not None
        filling: list[tuple[int, _Request, RequestEnforcer]] = []
        for row, req in rows:
            ban = req.enforcer.steady_ban if req.enforcer is not None else None
            if _join_ban(plan, active, row, req, ban):
                continue
            enforcer = self._plan_row(plan, active, bitmask, row, req)
            if enforcer is not None:  # in its arguments: filled below, batched
                filling.append((row, req, enforcer))
        for row, req in self._fill(bitmask, filling):
            self._plan_row(plan, active, bitmask, row, req, filled=True)
        if not active:
            return
        try:
            plan.finish(bitmask)
            self._apply(logits, active, plan)
        except Exception as e:  # never an engine error, never an empty row
            bitmask[:] = -1
            for row, req in active:
                if torch.isneginf(logits[row]).all():
                    logits[row] = 0.0
                self._contain(req, "apply", e)
        self._maybe_log()

    def _plan_row(
        self,
        plan: MaskPlan,
        active: list[tuple[int, _Request]],
        bitmask: np.ndarray,
        row: int,
        req: _Request,
        filled: bool = False,
    ) -> RequestEnforcer | None:
        """Add ``req``'s directive for ``row`` to ``plan``. An argument row
        whose bitmask is not ``filled`` yet is returned instead, to be filled
        with the others."""
        try:
            enforcer = self._enforcer(req)
            if enforcer.phase is Phase.OFF:
                return None
            if filled:
                directive = enforcer.directive_filled(bitmask[row])
            elif enforcer.needs_fill:
                return enforcer
            else:
                directive = enforcer.directive()
            directive = self._directive(req, enforcer, directive, bitmask[row])
            if directive is not None:
                plan.add(row, directive)
                active.append((row, req))
        except Exception as e:  # contained to this request
            bitmask[row] = -1
            self._contain(req, "mask", e)
        return None

    def _fill(
        self,
        bitmask: np.ndarray,
        filling: list[tuple[int, _Request, RequestEnforcer]],
    ) -> list[tuple[int, _Request]]:
        """Fill the argument rows' grammar bitmasks, all at once (xgrammar's
        thread pool); one request's failure fills the others one by one."""
        if not filling:
            return []
        rows = [row for row, _, _ in filling]
        try:  # (xgrammar writes every word of a row it fills)
            matchers = [enforcer.fill_matcher() for _, _, enforcer in filling]
            if self._batcher is None:
                import xgrammar as xgr

                self._batcher = xgr.BatchGrammarMatcher()
            self._batcher.batch_fill_next_token_bitmask(
                matchers, torch.from_numpy(bitmask), indices=rows
            )
            return [(row, req) for row, req, _ in filling]
        except Exception as e:  # one request's matcher, or xgrammar's batch
            self._warn_once(
                "batch-fill",
                "Kimi tool Enforcer: batch bitmask fill failed (%s); filling "
                "the argument rows one by one",
                e,
            )
        done = []
        for row, req, enforcer in filling:
            try:
                enforcer.fill_grammar(bitmask[row])
                done.append((row, req))
            except Exception as e:  # contained to this request
                bitmask[row] = -1
                self._contain(req, "mask", e)
        return done

    def _directive(
        self,
        req: _Request,
        enforcer: RequestEnforcer,
        directive: Any,
        row: np.ndarray,
    ) -> Any:
        """``enforcer``'s directive, checked and counted (None: not enforced;
        ``row``: the request's bitmask row)."""
        if enforcer.degrades != req.degrades:
            self._count_degrades(req, enforcer)
        if enforcer.phase is Phase.OFF:  # nothing at all was allowed
            row[:] = -1
            self._stand_down(req, enforcer.off_reason or "empty")
            return None
        ids = directive.ids if isinstance(directive, Ban | Only) else ()
        if ids and (min(ids) < 0 or max(ids) >= len(row) * 32):
            raise ValueError("a directive names an id outside the vocabulary")
        return directive

    def _apply(
        self,
        logits: torch.Tensor,
        active: list[tuple[int, _Request]],
        plan: MaskPlan,
    ) -> None:
        assert self._bitmask is not None
        guarded = [(r, q) for r, q in active if q.guarded]
        saved = {r: logits[r].clone() for r, _ in guarded}
        # "Blocked": the model's first choice did not survive a short list or
        # a grammar (free-text bans are not counted: one scan less per row).
        # Measured on one row in ``every`` each step (row mod every = step
        # mod every) and scaled: the cost is spread evenly over the steps.
        self._steps += 1
        every = self._blocked_every
        watched = (
            [r for r in plan.narrowed_rows if r % every == self._steps % every]
            if every > 0
            else []
        )
        if watched:
            watched_t = to_device(np.array(watched, dtype=np.int64), logits.device)
            before = first_choices(logits, watched, watched_t)
        apply_plan(logits, plan, self._bitmask)
        for row, req in guarded:
            if torch.isneginf(logits[row]).all():
                logits[row] = saved[row]
                self._stand_down(req, "conflict: other constraints leave no token")
        if watched:
            blocked = torch.isneginf(logits[watched_t, before]).sum() * every
            self._blocked = (
                blocked if self._blocked is None else self._blocked + blocked
            )

    def _count_degrades(self, req: _Request, enforcer: RequestEnforcer) -> None:
        for kind, n in enforcer.degrades.items():
            new = n - req.degrades.get(kind, 0)
            if new > 0:
                self.length_fallbacks += new
                metrics.inc(metrics.LENGTH_FALLBACKS_TOTAL, new, kind)
        req.degrades = dict(enforcer.degrades)
        why = {
            "dead_end": "left no token with the grammar; that row used the "
            "grammar alone",
            "budget": "could not be looked up within the walk budget; they are "
            "not enforced for this request",
        }
        for kind in enforcer.degrades:
            self._warn_once(
                f"fallback:{kind}",
                "Kimi tool Enforcer: the string length masks of tool %r %s (a "
                "length bound may be broken). Counted as length fallbacks.",
                enforcer.current_tool,
                why.get(kind, kind),
            )

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self._log_interval:
            return
        self._last_log = now
        try:
            self._log_summary()
        except Exception as e:  # reporting never takes the engine down
            self._warn_once("log", "Kimi tool Enforcer could not report: %s", e)

    def _log_summary(self) -> None:
        self.flush_metrics()
        self._log_counts()

    def _log_counts(self) -> None:
        c = metrics.counts()
        self._logged = c
        if self._reports and logger.isEnabledFor(logging.INFO):
            store = self._loader.store
            stats = store.stats if store is not None else None
            entries, size = store.cache_size if store is not None else (0, 0)
            logger.info(
                "Kimi tool Enforcer: %d requests, %d blocked steps, "
                "%d grammars compiled in %.2f s (%d cache hits), stood down %d, "
                "length fallbacks %d; holding %d grammars (%.1f MiB), %d live "
                "request states%s",
                c.get(metrics.ENFORCED_REQUESTS_TOTAL, 0),
                c.get(metrics.BLOCKED_TOKENS_TOTAL, 0),
                stats.compiles if stats else 0,
                stats.compile_seconds if stats else 0.0,
                stats.cache_hits if stats else 0,
                sum(v for k, v in c.items() if k.startswith(metrics.STOOD_DOWN_TOTAL)),
                self.length_fallbacks,
                entries,
                size / (1 << 20),
                len(self._requests),
                self._log_suffix,
            )

    def _went_idle(self) -> None:
        """The batch emptied: counters are flushed now, and the last counts
        are logged one interval later unless traffic logs them first."""
        self.flush_metrics()
        if not self._reports or metrics.counts() == self._logged:
            return
        if self._idle_log is not None:
            self._idle_log.cancel()
        self._idle_log = threading.Timer(self._log_interval, self._log_if_idle)
        self._idle_log.daemon = True
        self._idle_log.start()

    def _log_if_idle(self) -> None:
        try:
            if not self._requests and metrics.counts() != self._logged:
                self._log_counts()
        except Exception as e:  # reporting never takes the engine down
            self._warn_once("log", "Kimi tool Enforcer could not report: %s", e)

    def flush_metrics(self) -> None:
        """Move device-side tallies to the counters (one sync)."""
        try:
            if self._blocked is not None:
                blocked, self._blocked = self._blocked, None
                metrics.inc(metrics.BLOCKED_TOKENS_TOTAL, int(blocked.item()))
            store = self._loader.store
            if store is not None:
                seconds = store.stats.compile_seconds
                metrics.inc(metrics.COMPILE_SECONDS_TOTAL, seconds - self._compile_s)
                self._compile_s = seconds
        except Exception as e:  # reporting never takes the engine down
            self._warn_once("log", "Kimi tool Enforcer could not report: %s", e)

    # -- V1 runner ---------------------------------------------------------

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return

        def new_state(params: Any, prompt: list[int] | None, output: list[int]):
            req = self._new_request(params)
            if req is not None:
                req.output = output
                if prompt:
                    req.prompt = lambda n: prompt[-n:]
            return req

        process_dict_updates(self._requests, batch_update, new_state)
        # The device-side tallies move to the counters at each log line and
        # when the batch empties: no device sync on a busy step.
        if batch_update.removed and not self._requests:
            self._went_idle()

    def apply(
        self, logits: torch.Tensor, ctx: LogitsContext | None = None
    ) -> torch.Tensor:
        if not self._requests:
            return logits
        try:
            if ctx is not None:
                return self._apply_v2(logits, ctx)
            return self._apply_v1(logits)
        except Exception as e:  # last resort: the batch goes on unenforced
            for req in self._requests.values():
                self._contain(req, "batch", e)
            return logits

    def _apply_v1(self, logits: torch.Tensor) -> torch.Tensor:
        rows: list[tuple[int, _Request]] = []
        plan, bitmask = self._step_plan(logits)
        active: list[tuple[int, _Request]] = []
        size = logits.shape[0]
        for row, req in self._requests.items():
            if row >= size:
                continue
            output = req.output
            if output is not None and (n := len(output)) > req.consumed:
                enforcer = req.enforcer
                # Most rows: one new token of free text, which changes
                # nothing; the row joins the ban list of free text.
                if (
                    n == req.consumed + 1
                    and enforcer is not None
                    and enforcer.accept_text(output[-1])
                ):
                    req.consumed = n
                    if not _join_ban(plan, active, row, req, enforcer.steady_ban):
                        # The first row with this list: checked once.
                        self._plan_row(plan, active, bitmask, row, req)
                    continue
                self._accept(req, output[req.consumed :])
                req.consumed = n
            rows.append((row, req))
        self._mask(logits, rows, (plan, active))
        return logits

    # -- Model Runner V2 ---------------------------------------------------

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        req = self._new_request(sampling_params)
        if req is None:
            self._requests.pop(req_idx, None)
            return False
        states = self._v2_states
        if states is not None:
            # Read at the first apply(), once the slot's tokens are written.
            def read(n: int) -> list[int]:
                end = int(states.prompt_len.np[req_idx])
                ids = states.all_token_ids.gpu[req_idx, max(0, end - n) : end]
                return ids.cpu().tolist()

            req.prompt = read
        self._requests[req_idx] = req
        return True

    def _apply_v2(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        slots = ctx.idx_mapping_np
        rows = [
            (row, int(s)) for row, s in enumerate(slots) if int(s) in self._requests
        ]
        if not rows:
            return logits
        if logits.shape[0] != len(slots):
            for _, slot in rows:
                self._stand_down(
                    self._requests[slot], "speculative: not supported with drafts"
                )
            return logits
        states = self._v2_states
        assert states is not None
        # Positions from the host (exact without drafts); the newest tokens
        # were sampled on the device: one copy for the batch.
        batch = np.array([r for r, _ in rows], dtype=np.int64)
        pos = (ctx.seq_lens_upper_bound_np[batch] - 1).tolist()
        sel = to_device(batch, ctx.input_ids.device)
        newest = ctx.input_ids[sel].cpu().tolist()
        enforced: list[tuple[int, _Request]] = []
        for (row, slot), p, tok in zip(rows, pos, newest):
            req = self._requests[slot]
            try:
                self._catch_up_v2(req, slot, p, tok)
            except Exception as e:  # contained to this request
                self._contain(req, "read", e)
            enforced.append((row, req))
        self._mask(logits, enforced)
        return logits

    def _catch_up_v2(self, req: _Request, slot: int, pos: int, newest: int) -> None:
        states = self._v2_states
        assert states is not None
        prompt_len = int(states.prompt_len.np[slot])
        written = pos - prompt_len + 1  # output tokens committed so far
        missing = written - req.consumed
        if missing <= 0:
            return
        enforcer = req.enforcer
        if missing == 1 and enforcer is not None and enforcer.accept_text(newest):
            req.consumed = written
            return
        history: list[int] = []
        if missing > 1:  # resumed after preemption: read the history
            start = prompt_len + req.consumed
            history = (
                states.all_token_ids.gpu[slot, start : start + missing - 1]
                .cpu()
                .tolist()
            )
        self._accept(req, [*history, newest])
        req.consumed = written


def _join_ban(
    plan: MaskPlan,
    active: list[tuple[int, _Request]],
    row: int,
    req: _Request,
    ban: Ban | None,
) -> bool:
    """Free text and thinking: ``row`` joins ``ban``'s list, which an earlier
    row of this step already checked. False where there is no such list."""
    same = plan.bans.get(ban.ids) if ban is not None else None
    if same is None:
        return False
    same.append(row)
    active.append((row, req))
    return True


class _Off:
    """Placeholder enforcer for a request that will not be enforced."""

    phase = Phase.OFF
    off_reason = "unavailable"
    steady_ban = None

    def accept_text(self, token: int) -> bool:
        return False  # never taken: the slow path sees the phase is OFF

    def stop(self, reason: str) -> None:
        pass


_OFF: Any = _Off()
