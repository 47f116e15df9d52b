# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""``kimi_k2_robust``: vLLM tool-parser adapter over :mod:`.tool_calls`.

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

import functools
import weakref
from collections.abc import Sequence
from typing import Any

from vllm_kimi_tools import envs, metrics
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
    ToolStrictLevel,
    count_history_tool_calls,
    forward_history_tool_call_count,
    init_logger,
)
from vllm_kimi_tools.chat import hook
from vllm_kimi_tools.chat.conversation import count_tool_calls
from vllm_kimi_tools.enforcer import admission
from vllm_kimi_tools.enforcer.prompt import OutputStart
from vllm_kimi_tools.enforcer.spec import SPEC_KEY, EnforcerSpec
from vllm_kimi_tools.names import PARSER_NAME
from vllm_kimi_tools.parser.reasoning_parser import (
    exact_stream_text,
    text_spaced,
    unspace,
)
from vllm_kimi_tools.parser.tool_calls import (
    DroppedToolCall,
    KimiToolCallParser,
    ParseDelta,
)
from vllm_kimi_tools.parser.tool_ids import unsafe_tool_name
from vllm_kimi_tools.tokens import vocab_problem
from vllm_kimi_tools.tools import declared_tools

logger = init_logger(__name__)

# vLLM loads this module when a server asks for kimi_k2_robust: from then
# on the chat-template hook normalises this process's Kimi chats.
hook.serve()
# vLLM 0.33's derender seeds the history's count on its parser only.
forward_history_tool_call_count()

# Per request (vLLM builds a parser per request and choice, after
# adjust_request): the history's tool-call count, counted once.
_HISTORY_CALLS: dict[int, int] = {}


def history_tool_call_count(request: Any) -> int:
    """Tool calls already in the conversation: the first output index.

    For Chat Completions this is the count the chat-template hook renders
    (orphan tool results get an index of their own), so ids never collide.
    """
    key = id(request)
    count = _HISTORY_CALLS.get(key)
    if count is None:
        if isinstance(request, ChatCompletionRequest):
            count = count_tool_calls(request.messages)
        else:
            count = count_history_tool_calls(request)
        _HISTORY_CALLS[key] = count
        weakref.finalize(request, _HISTORY_CALLS.pop, key, None)
    return count


def _call_parser(request: Any, history: int | None = None) -> KimiToolCallParser:
    """The request's incremental parser: its tools, the history's count
    (``history`` where vLLM gave it, else counted from the request) and,
    when enforced, the schema checks and the tools whose calls stream early
    (the same calls in a non-streaming response, so that a call dropped
    after its header went out numbers the rest alike)."""
    return KimiToolCallParser(
        declared_tools(request),
        history_tool_call_count(request) if history is None else history,
        admission.enforced_checkers(request),
        admission.streamed_tools(request),
    )


def attach_enforcer_spec(request: Any, *, max_model_len: int | None = None) -> None:
    """Put the request's Enforcer spec in ``vllm_xargs`` (in place).

    Raises ``ValueError`` (HTTP 400) for tools no call could satisfy, within
    the request's ``max_tokens`` where the call is forced (``max_model_len``:
    the server's, when known). Never anything else: an unexpected failure
    is a 400 too, logged with its traceback.
    """
    spec = admit(request, max_model_len=max_model_len)
    request.vllm_xargs = {**(request.vllm_xargs or {}), SPEC_KEY: spec.to_json()}
    if spec.reply is not None:
        # The Enforcer shapes the reply (JSON, or the calls instead): vLLM's
        # own JSON grammar would forbid the calls.
        request.response_format = None


def admit(request: Any, *, max_model_len: int | None = None) -> EnforcerSpec:
    """The request's Enforcer spec (admission: :func:`attach_enforcer_spec`'s
    400s, degraded schemas and loose tools logged and counted)."""
    try:
        spec, notes = admission.spec_for(
            request,
            first_index=history_tool_call_count(request),
            max_model_len=max_model_len,
        )
    except admission.AdmissionError as e:
        metrics.inc(metrics.REFUSED_REQUESTS_TOTAL, 1, e.reason)
        if e.reason == "error":
            logger.error(
                "%s Enforcer: could not prepare the tools",
                PARSER_NAME,
                exc_info=e.__cause__,
            )
            raise ValueError(f"{PARSER_NAME}: {e}") from None
        raise
    for note in notes:
        metrics.inc(metrics.DEGRADED_SCHEMAS_TOTAL)
        logger.warning("%s Enforcer: %s", PARSER_NAME, note)
    loose = [tool.name for tool in spec.tools if not tool.exact]
    if loose:
        metrics.inc(metrics.LOOSE_TOOLS_TOTAL, len(loose))
    return spec


def speculative_tag(request: Any, vocab: Any = None) -> Any:
    """The plugin's structural tag for ``request`` (:mod:`.structural_tag`),
    for vLLM's structured outputs where the Enforcer cannot run."""
    from vllm_kimi_tools.enforcer.structural_tag import TagOptions, spec_structural_tag

    # The prompt is not known here: without a reasoning parser that holds
    # the grammar back until the thinking ends, the tag takes any start.
    start = OutputStart.THOUGHT if hook.grammar_after_thinking() else None
    return spec_structural_tag(
        admit(request), vocab=vocab, options=TagOptions(start=start)
    )


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
        problem = vocab_problem(self.vocab, PARSER_NAME)
        if problem is not None:
            raise ValueError(problem)
        envs.validate()
        hook.require()
        self._stream: KimiToolCallParser | None = None
        self._stream_text = exact_stream_text(tokenizer)
        # The history's count where the request carries no messages.
        self._history: int | None = None

    def adjust_request(
        self, request: ChatCompletionRequest | ResponsesRequest
    ) -> ChatCompletionRequest | ResponsesRequest:
        request = super().adjust_request(request)
        for tool in declared_tools(request):
            problem = unsafe_tool_name(tool.name)
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
        if _enforcer_runs(request):
            attach_enforcer_spec(request)
        elif SPEC_KEY in (request.vllm_xargs or {}):
            # Only this parser writes the spec: a client's own is not trusted.
            request.vllm_xargs = {
                k: v for k, v in request.vllm_xargs.items() if k != SPEC_KEY
            }
        return request

    @property
    def default_tool_strict_level(self) -> Any:  # type: ignore[override]
        # With the plugin's tag, vLLM must ask for a tag for tool_choice
        # "auto" too (it asks from level "function" up). Otherwise AUTO, the
        # base class's default on vLLM 0.33 (which compares the level, so
        # None fails there); 0.32 treats AUTO as no default too.
        if _speculative_tag_on():
            return ToolStrictLevel.FUNCTION
        return ToolStrictLevel.AUTO

    def get_structural_tag(self, request: Any, **kwargs: Any) -> Any:
        # With the Enforcer on, vLLM's own (looser) structural tag stays off:
        # two grammars on one request could leave no token to sample. Where
        # the Enforcer cannot run, the tag is vLLM's, as for stock kimi_k2,
        # or, under speculative decoding with KIMI_TOOLS_SPECULATIVE_TAG on,
        # the plugin's (the Enforcer's rules a grammar can carry).
        if admission.enforced(request):
            if hook.enforcer_unavailable() is None:
                return None
            if _speculative_tag_on():
                return speculative_tag(request, self.vocab)
        return super().get_structural_tag(request, **kwargs)

    def set_history_tool_call_count(self, count: int) -> None:
        """The conversation's tool-call count, where vLLM parses a request
        without its messages (0.33's ``/generate`` derender: the render
        server counted them). Forwarded by vLLM's parser through
        :func:`._compat.forward_history_tool_call_count`."""
        self._history = count

    # -- non-streaming -----------------------------------------------------

    def extract_tool_calls(
        self, model_output: str, request: ChatCompletionRequest
    ) -> ExtractedToolCallInformation:
        if self.skip_reasoning_parsing and text_spaced(request, self.model_tokenizer):
            # Straight from a spacing detokenizer (no reasoning parser made
            # it exact first): undo the spaces around markers.
            model_output = unspace(self.model_tokenizer, model_output)
        result = _call_parser(request, self._history).parse_whole(model_output)
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
            self._stream = _call_parser(request, self._history)
        if self._stream_text is not None and delta_token_ids:
            # The token ids are the exact text, whatever the detokenizer did.
            delta_text = self._stream_text.feed(delta_token_ids)
        return _to_delta_message(self._stream.feed(delta_text))

    def finish_streaming(self) -> DeltaMessage | None:
        if self._stream is None:
            return None
        delta = ParseDelta()
        if self._stream_text is not None:
            delta.extend(self._stream.feed(self._stream_text.finish()))
        delta.extend(self._stream.finish())
        return _to_delta_message(delta)


def _enforcer_runs(request: Any) -> bool:
    """Whether the Enforcer constrains ``request``; a request it would but
    cannot on this server is counted (and the reason logged once)."""
    if not admission.enforced(request):
        return False
    unavailable = hook.enforcer_unavailable()
    if unavailable is None:
        return True
    label, why = unavailable
    metrics.inc(metrics.UNENFORCED_REQUESTS_TOTAL, 1, label)
    _warn_unenforced(why)
    return False


def _speculative_tag_on() -> bool:
    """Whether the plugin's structural tag stands in for the Enforcer:
    speculative decoding keeps it out and KIMI_TOOLS_SPECULATIVE_TAG is on."""
    unavailable = hook.enforcer_unavailable()
    return (
        unavailable is not None
        and unavailable[0] == "speculative"
        and envs.KIMI_TOOLS_ENFORCER
        and envs.KIMI_TOOLS_SPECULATIVE_TAG
    )


def _warn_unenforced(why: str) -> None:
    _warn_once(why, _speculative_tag_on())


@functools.cache
def _warn_once(why: str, tagged: bool) -> None:
    instead = (
        "the plugin's structural tag through vLLM's structured outputs "
        "(KIMI_TOOLS_SPECULATIVE_TAG; docs/speculative.md)"
        if tagged
        else "vLLM's own structured output (--tool-strict-level, "
        'tool_choice "required" and named), as with stock kimi_k2'
    )
    logger.warning(
        "%s: the tool Enforcer cannot run on this server (%s); tool calls "
        "get %s. Counted as %s.",
        PARSER_NAME,
        why,
        instead,
        metrics.UNENFORCED_REQUESTS_TOTAL,
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
