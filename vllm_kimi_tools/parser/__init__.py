# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The parser: Kimi K2 model output → content, reasoning and tool calls.

The pure core (:mod:`.tool_ids`, :mod:`.arguments`, :mod:`.tool_calls`,
:mod:`.detokenize`) imports no vLLM; :mod:`.tool_parser` and
:mod:`.reasoning_parser` are the thin vLLM adapters registered as
``kimi_k2_robust``. The wire format it reads::

    text<|tool_calls_section_begin|>
    <|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{...}<|tool_call_end|>
    <|tool_calls_section_end|>
"""
