#!/usr/bin/env bash
# The project's commands. Each one installs what it needs first.
#   bash scripts/dev.sh demo    # serve the tiny Kimi-format model, one tool call
#   bash scripts/dev.sh test    # lint + unit tests + e2e tests through vllm serve
#   bash scripts/dev.sh bench   # parser benchmark vs vLLM's built-in kimi_k2
#   bash scripts/dev.sh k2vv    # K2VV simulation: stock vLLM vs kimi_k2_robust
#   bash scripts/dev.sh kvv     # Moonshot's vendor verifier, unmodified, three-way
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export KIMI_TOOLS_CACHE="${KIMI_TOOLS_CACHE:-$PWD/.cache}"
PY=.venv/bin/python
cmd="${1:-test}"
shift || true
case "$cmd" in
  demo)  exec "$PY" -m kimi_testbed.demo "$@" ;;
  test)
    .venv/bin/ruff check vllm_kimi_tools testbed tests benchmarks examples
    .venv/bin/ruff format --check vllm_kimi_tools testbed tests benchmarks examples
    exec "$PY" -m pytest "$@" ;;
  bench) exec "$PY" benchmarks/bench_parser.py --out benchmarks/results "$@" ;;
  k2vv)  exec "$PY" benchmarks/bench_k2vv.py --out benchmarks/results "$@" ;;
  kvv)   exec "$PY" benchmarks/bench_kvv.py --out benchmarks/results "$@" ;;
  *) echo "unknown command: $cmd (demo|test|bench|k2vv|kvv)" >&2; exit 2 ;;
esac
