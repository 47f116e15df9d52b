# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""Test bed: a tiny local Kimi-format model, a scripted "puppet" logits
processor and a ``vllm serve`` launcher. Used by the tests, the demo and the
benchmarks; never loaded by a production server."""
