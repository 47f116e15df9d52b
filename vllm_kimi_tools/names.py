# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""The plugin's public name, as a server is started with it::

    vllm serve <kimi model> --enable-auto-tool-choice \
        --tool-call-parser kimi_k2_robust [--reasoning-parser kimi_k2_robust]
"""

# The ``--tool-call-parser`` / ``--reasoning-parser`` name: a public API.
PARSER_NAME = "kimi_k2_robust"
