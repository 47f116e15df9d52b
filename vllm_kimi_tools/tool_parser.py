# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""``kimi_k2_robust``: vLLM tool-parser adapter over :mod:`.parsing`.

Use with::

    vllm serve <kimi model> --enable-auto-tool-choice \
        --tool-call-parser kimi_k2_robust

The adapter only translates: request → declared tools and history count,
parser output → vLLM's ``ExtractedToolCallInformation`` / ``DeltaMessage``.
It declares itself engine-based so that vLLM (a) feeds it deltas rather than
re-sending the whole text, (b) returns its cleaned content even when no call
was found, and (c) calls ``finish_streaming`` at the end of a stream.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from vllm_kimi_tools import PARSER_NAME, detokenize, metrics
from vllm_kimi_tools._compat import (
    ChatCompletionRequest,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ResponsesRequest,
    ToolCall,
    ToolParser,
    count_history_tool_calls,
    init_logger,
)
from vllm_kimi_tools.conversation import count_tool_calls
from vllm_kimi_tools.enforcer.request import (
    ToolDecl,
    argument_checkers,
    build_spec,
    output_budget,
)
from vllm_kimi_tools.enforcer.spec import (
    OPT_OUT_KEY,
    SPEC_KEY,
    EnforcerSpec,
    opted_out,
)
from vllm_kimi_tools.parsing import (
    DroppedToolCall,
    KimiToolCallParser,
    ParseDelta,
    ToolSpec,
    parse_tool_calls,
)
from vllm_kimi_tools.reasoning_parser import (
    exact_token_bytes,
    stop_token_ids,
    unspace,
)
from vllm_kimi_tools.tokens import K3_PARSER_NAME, is_k3_vocab, missing_tool_tokens
from vllm_kimi_tools.tool_ids import unsafe_tool_name

logger = init_logger(__name__)


def history_tool_call_count(request: Any) -> int:
    """Tool calls already in the conversation: the first output index.

    For Chat Completions this is the count the chat-template hook renders
    (orphan tool results get an index of their own), so ids never collide.
    """
    if isinstance(request, ChatCompletionRequest):
        return count_tool_calls(request.messages)
    return count_history_tool_calls(request)


# Server-wide switch for the Enforcer (on unless "0"/"false"/"off"/"no").
ENFORCER_ENV = "VLLM_KIMI_TOOLS_ENFORCER"


def enforcer_enabled_by_env() -> bool:
    return not opted_out(os.environ.get(ENFORCER_ENV, "1"))


# Server-wide switch for streaming arguments as they are written (on unless
# "0"/"false"/"off"/"no"; off: every call is sent whole once complete).
STREAM_ARGUMENTS_ENV = "VLLM_KIMI_TOOLS_STREAM_ARGUMENTS"


def streamed_tools(request: Any) -> frozenset[str]:
    """Tools whose calls stream as they are written: those the Enforcer
    constrains exactly in this request (a started call can only become
    valid). Without the Enforcer, none: a call is sent once it is whole and
    valid, so a client never receives one that is then dropped."""
    if opted_out(os.environ.get(STREAM_ARGUMENTS_ENV, "1")):
        return frozenset()
    text = (getattr(request, "vllm_xargs", None) or {}).get(SPEC_KEY)
    if not isinstance(text, str):
        return frozenset()
    try:
        spec = EnforcerSpec.from_json(text)
    except ValueError:
        return frozenset()
    return frozenset(tool.name for tool in spec.tools if tool.exact)


def request_tool_decls(request: Any) -> list[ToolDecl]:
    """Function tools with their schema and ``strict`` flag."""
    decls: list[ToolDecl] = []
    for tool in getattr(request, "tools", None) or []:
        function = getattr(tool, "function", None)
        if function is not None:  # Chat Completions
            decls.append(ToolDecl(function.name, function.parameters, function.strict))
        elif getattr(tool, "type", None) == "function":  # Responses
            decls.append(
                ToolDecl(
                    tool.name,
                    getattr(tool, "parameters", None),
                    getattr(tool, "strict", None),
                )
            )
    return decls


def request_tool_specs(request: Any) -> list[ToolSpec]:
    """Function tools declared in a Chat Completions or Responses request."""
    return [ToolSpec(d.name, d.parameters) for d in request_tool_decls(request)]


def named_tool_choice(request: Any) -> str | None:
    choice = request.tool_choice
    function = getattr(choice, "function", None)  # Chat Completions
    if function is not None:
        return function.name
    if getattr(choice, "type", None) == "function":  # Responses
        return getattr(choice, "name", None)
    return None


def wants_enforcer(request: Any) -> bool:
    """Whether the Enforcer constrains this request (see docs/enforcer.md)."""
    if not enforcer_enabled_by_env() or not request_tool_decls(request):
        return False
    if request.tool_choice == "none":
        return False
    xargs = getattr(request, "vllm_xargs", None) or {}
    return not opted_out(xargs.get(OPT_OUT_KEY))


def enforced_checkers(request: Any) -> dict[str, Any] | None:
    """For an enforced request, per tool the schema check every returned call
    must pass (docs/enforcer.md, "Validation of the calls"); else None."""
    if SPEC_KEY not in (getattr(request, "vllm_xargs", None) or {}):
        return None
    return argument_checkers(request_tool_decls(request))


def attach_enforcer_spec(request: Any, *, max_model_len: int | None = None) -> None:
    """Put the request's Enforcer spec in ``vllm_xargs`` (in place).

    Raises ``ValueError`` (HTTP 400) for tools no call could satisfy, within
    the request's ``max_tokens`` where the call is forced (``max_model_len``:
    the server's, when known). Never anything else: an unexpected failure
    is a 400 too, logged with its traceback.
    """
    named = named_tool_choice(request)
    choice = request.tool_choice if isinstance(request.tool_choice, str) else "auto"
    try:
        spec, notes = build_spec(
            request_tool_decls(request),
            first_index=history_tool_call_count(request),
            choice=choice,
            named=named,
            parallel=request.parallel_tool_calls is not False,
            max_tokens=output_budget(request),
            max_model_len=max_model_len,
        )
    except ValueError as e:
        reason = getattr(e, "reason", "request")
        metrics.inc(metrics.REFUSED_REQUESTS_TOTAL, 1, reason)
        raise
    except Exception as e:  # a bug must not become an HTTP 500 or worse
        metrics.inc(metrics.REFUSED_REQUESTS_TOTAL, 1, "error")
        logger.exception("%s Enforcer: could not prepare the tools", PARSER_NAME)
        raise ValueError(
            f"{PARSER_NAME}: the tool schemas could not be prepared for "
            f"constrained decoding ({type(e).__name__}); send "
            f'"vllm_xargs": {{"{OPT_OUT_KEY}": false}} to decode without it'
        ) from None
    for note in notes:
        metrics.inc(metrics.DEGRADED_SCHEMAS_TOTAL)
        logger.warning("%s Enforcer: %s", PARSER_NAME, note)
    loose = [tool.name for tool in spec.tools if not tool.exact]
    if loose:
        metrics.inc(metrics.LOOSE_TOOLS_TOTAL, len(loose))
    request.vllm_xargs = {**(request.vllm_xargs or {}), SPEC_KEY: spec.to_json()}


class KimiK2RobustToolParser(ToolParser):
    """Kimi K2 tool parser that never loses a valid call or leaks markup."""

    # Same xgrammar builtin as the stock parser, so ``--tool-strict-level``,
    # strict tools and required/named tool_choice keep working unchanged.
    structural_tag_model = "kimi"
    engine_based_streaming = True
    # vLLM sets this when no reasoning parser runs before this one; the text
    # then arrives straight from the detokenizer (see extract_tool_calls).
    skip_reasoning_parsing = False

    def __init__(self, tokenizer: Any, tools: Sequence[Any] | None = None) -> None:
        super().__init__(tokenizer, tools)
        if is_k3_vocab(self.vocab):
            raise ValueError(
                f"{PARSER_NAME} serves the Kimi K2 / K2.5 tool-call format; this "
                "tokenizer is Kimi K3's (XTML markers), which it would never "
                f"parse. Use --tool-call-parser {K3_PARSER_NAME} "
                f"--reasoning-parser {K3_PARSER_NAME} instead."
            )
        missing = missing_tool_tokens(self.vocab)
        if missing:
            raise ValueError(
                f"{PARSER_NAME} needs the Kimi K2 tool-call tokens in the "
                f"tokenizer vocabulary; missing: {', '.join(missing)}"
            )
        _require_render_hook()
        self._stream: KimiToolCallParser | None = None
        self._stream_text: detokenize.TokenText | None = None
        if not getattr(tokenizer, "is_fast", True):
            self._stream_text = detokenize.TokenText(exact_token_bytes(tokenizer))
            self._not_text = stop_token_ids(tokenizer)

    def adjust_request(
        self, request: ChatCompletionRequest | ResponsesRequest
    ) -> ChatCompletionRequest | ResponsesRequest:
        request = super().adjust_request(request)
        for decl in request_tool_decls(request):
            problem = unsafe_tool_name(decl.name)
            if problem is not None:
                raise ValueError(f"{PARSER_NAME}: {problem}")
        # The tool markers must reach the parser as text, also in a turn
        # without tools (or with tool_choice "none"), where a call the model
        # writes anyway is dropped and its markup kept out of the content.
        request.skip_special_tokens = False
        # A slow tokenizer's detokenizer would put spaces around every marker
        # (Chat Completions has the switch; Responses in vLLM 0.32 does not,
        # see extract_tool_calls).
        if hasattr(request, "spaces_between_special_tokens"):
            request.spaces_between_special_tokens = False
        # vLLM's caller keeps its own reference: change the request in place.
        if wants_enforcer(request):
            attach_enforcer_spec(request)
        elif SPEC_KEY in (request.vllm_xargs or {}):
            # Only this parser writes the spec: a client's own is not trusted.
            request.vllm_xargs = {
                k: v for k, v in request.vllm_xargs.items() if k != SPEC_KEY
            }
        return request

    def get_structural_tag(self, request: Any, **kwargs: Any) -> Any:
        # With the Enforcer on, vLLM's own (looser) structural tag stays off:
        # two grammars on one request could leave no token to sample.
        if wants_enforcer(request):
            return None
        return super().get_structural_tag(request, **kwargs)

    # -- non-streaming -----------------------------------------------------

    def extract_tool_calls(
        self, model_output: str, request: ChatCompletionRequest
    ) -> ExtractedToolCallInformation:
        if self.skip_reasoning_parsing and detokenize.spaces_added(
            request, self.model_tokenizer
        ):
            # Straight from a spacing detokenizer (no reasoning parser made
            # it exact first): undo the spaces around markers.
            model_output = unspace(self.model_tokenizer, model_output)
        result = parse_tool_calls(
            model_output,
            request_tool_specs(request),
            history_tool_call_count(request),
            enforced_checkers(request),
            # The same calls stream early as in a stream, so that a call
            # dropped after its header went out numbers the rest alike.
            streamed_tools(request),
        )
        _report_dropped(result.dropped)
        return ExtractedToolCallInformation(
            tools_called=bool(result.tool_calls),
            tool_calls=[
                ToolCall(
                    id=call.id,
                    function=FunctionCall(
                        id=call.id, name=call.name, arguments=call.arguments
                    ),
                )
                for call in result.tool_calls
            ],
            content=result.content or None,
        )

    # -- streaming ---------------------------------------------------------

    def extract_tool_calls_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
        request: ChatCompletionRequest,
    ) -> DeltaMessage | None:
        if self._stream is None:
            self._stream = KimiToolCallParser(
                request_tool_specs(request),
                history_tool_call_count(request),
                enforced_checkers(request),
                streamed_tools(request),
            )
        if self._stream_text is not None and delta_token_ids:
            # The token ids are the exact text, whatever the detokenizer did.
            ids = [t for t in delta_token_ids if t not in self._not_text]
            delta_text = self._stream_text.feed(ids)
        return _to_delta_message(self._stream.feed(delta_text))

    def finish_streaming(self) -> DeltaMessage | None:
        if self._stream is None:
            return None
        delta = ParseDelta()
        if self._stream_text is not None:
            delta.extend(self._stream.feed(self._stream_text.finish()))
        delta.extend(self._stream.finish())
        return _to_delta_message(delta)


def _require_render_hook() -> None:
    """Fail at start-up (vLLM builds the parser once to validate it) when the
    chat-template hook is missing, instead of rendering unnormalised prompts."""
    from vllm_kimi_tools import _HOOK_PROBLEM, HOOK_RENDERER, register
    from vllm_kimi_tools._compat import installed_hf_renderer
    from vllm_kimi_tools.renderer import hook_enabled_by_env

    register()
    if not hook_enabled_by_env():
        return
    if installed_hf_renderer() != HOOK_RENDERER:
        problem = "; ".join(_HOOK_PROBLEM) or "vLLM's renderer registry changed"
        raise RuntimeError(
            f"{PARSER_NAME}: the chat-template hook is not installed ({problem}). "
            "Use vLLM 0.32.x, or set VLLM_KIMI_TOOLS_NORMALIZE=0 to serve "
            "without history normalisation."
        )


def _to_delta_message(delta: ParseDelta) -> DeltaMessage | None:
    _report_dropped(delta.dropped)
    if not delta.content and not delta.call_deltas:
        return None
    return DeltaMessage(
        content=delta.content or None,
        tool_calls=[
            DeltaToolCall(
                index=piece.index,
                id=piece.id,
                type="function" if piece.id is not None else None,
                function=DeltaFunctionCall(name=piece.name, arguments=piece.arguments),
            )
            for piece in delta.call_deltas
        ],
    )


def _report_dropped(dropped: Sequence[DroppedToolCall]) -> None:
    for call in dropped:
        metrics.record_dropped(call.reason.value)
        logger.warning(
            "%s: dropped a tool call (%s%s): id=%r name=%r arguments=%.200r",
            PARSER_NAME,
            call.reason.value,
            "; its start was already streamed" if call.streamed else "",
            call.raw_id,
            call.name,
            call.arguments,
        )
