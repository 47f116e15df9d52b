# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The Enforcer: constrained decoding of Kimi tool calls.

In the API server, :mod:`.admission` turns a request into an
:class:`~.spec.EnforcerSpec` (schemas prepared and checked by :mod:`.schemas`,
:mod:`.schema_checks`, :mod:`.paths`, :mod:`.lengths`). In the engine, the
vLLM adapter :mod:`.logits_processor` runs one :mod:`.machine` per request
(vocabulary tables from :mod:`.vocab`, argument grammars from
:mod:`.grammars`, the output's start from :mod:`.prompt`) and applies the
batch's masks (:mod:`.masks`). Everything but the adapter imports no vLLM.
"""
