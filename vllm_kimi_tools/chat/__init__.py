# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The chat-template hook: a conversation rendered as Moonshot's API renders it.

:mod:`.conversation` normalises the messages (pure); :mod:`.renderer` is vLLM's
HF renderer doing so for ``kimi_k2_robust`` servers, :mod:`.hook` the hook's
state in a process, :mod:`.render_cli` the ``vllm-kimi-tools render`` command.
"""
