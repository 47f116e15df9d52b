# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Moonshot's API contract on vLLM's OpenAI server (an ASGI middleware)."""
