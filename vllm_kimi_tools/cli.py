# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the vllm-kimi-tools project
"""``vllm-kimi-tools`` command line.

``vllm-kimi-tools render REQUEST.json --model DIR`` prints the exact prompt
a chat request becomes, before and after the chat-template hook
(:mod:`.chat.render_cli`).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-kimi-tools", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser(
        "render", help="print the prompt a chat request becomes, before/after"
    )
    render.add_argument("request", help="a Chat Completions request body (JSON)")
    render.add_argument("--model", required=True, help="model or tokenizer directory")
    args = parser.parse_args(argv)
    from vllm_kimi_tools.chat.render_cli import run

    return run(args.request, args.model)


if __name__ == "__main__":
    sys.exit(main())
