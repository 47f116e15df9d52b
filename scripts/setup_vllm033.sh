#!/usr/bin/env bash
# Builds .venv-vllm033: vLLM 0.33's Python code over the 0.32 CPU environment
# (.venv, scripts/setup_env.sh), for running the unit suite against 0.33.
# There is no CPU wheel of 0.33, so its wheel is installed without
# dependencies into a venv of its own whose site-packages also holds a .pth
# that adds .venv's site-packages after it: `vllm` is 0.33's, everything
# else (torch, transformers, xgrammar, this package in editable mode) is
# .venv's. The .pth also sets VLLM_TARGET_DEVICE=cpu (0.33's version has no
# "+cpu" to detect the CPU platform from). 0.33's compiled ops are CUDA
# builds that cannot load here; vLLM logs "Failed to import from vllm._C"
# and nothing the unit suite imports needs them. Not for `vllm serve`.
#
# The wheel (about 340 MB) is kept in $KIMI_TOOLS_CACHE/wheels (default
# .cache/wheels), so a rebuild does not download it again. Without it and
# without network this script fails and says so.
# Idempotent: a stamp records a finished build of this script over this .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${VENV:-.venv}
ENV033=${VENV_VLLM033:-.venv-vllm033}
VERSION=0.33.0
CACHE="${KIMI_TOOLS_CACHE:-$PWD/.cache}"
WHEELS="$CACHE/wheels"

bash scripts/setup_env.sh
STAMP="$ENV033/.vllm-kimi-tools-setup"
WANT="$( (cat scripts/setup_vllm033.sh "$BASE/.vllm-kimi-tools-setup"; pwd) | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

shopt -s nullglob
wheels=("$WHEELS"/vllm-"$VERSION"-*.whl)
if (( ${#wheels[@]} == 0 )); then
  echo "setup_vllm033: downloading vllm==$VERSION (wheel only, no dependencies) into $WHEELS" >&2
  partial="$WHEELS/.partial"
  rm -rf "$partial" && mkdir -p "$partial"
  if ! "$BASE/bin/python" -m pip --disable-pip-version-check -q download \
      --no-deps --only-binary=:all: --dest "$partial" "vllm==$VERSION"; then
    rm -rf "$partial"
    echo "setup_vllm033: FAILED to download vllm==$VERSION (no network?)." >&2
    echo "  Put its wheel in $WHEELS, or see scripts/dev.sh for KIMI_TOOLS_VLLM033=skip." >&2
    exit 1
  fi
  mv "$partial"/vllm-"$VERSION"-*.whl "$WHEELS"/
  rm -rf "$partial"
  wheels=("$WHEELS"/vllm-"$VERSION"-*.whl)
fi

# From scratch: pip must not see .venv's vLLM (it would try to uninstall it).
rm -rf "$ENV033"
"$BASE/bin/python" -m venv --without-pip "$ENV033"
"$BASE/bin/python" -m pip --disable-pip-version-check -q --python "$ENV033/bin/python" \
  install --no-deps --no-index "${wheels[0]}"
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
BASE_SITE="$(cd "$(site_of "$BASE")" && pwd)"
printf 'import os, site; os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu"); site.addsitedir(%s)\n' \
  "'$BASE_SITE'" > "$(site_of "$ENV033")/zz-vllm-kimi-tools-base.pth"
"$ENV033/bin/python" - "$VERSION" <<'EOF'
import sys

import vllm

assert vllm.__version__ == sys.argv[1], vllm.__version__
import vllm_kimi_tools._compat  # noqa: F401  every vLLM internal the plugin uses
import vllm_kimi_tools.enforcer.logits_processor  # noqa: F401
import vllm_kimi_tools.parser.reasoning_parser  # noqa: F401
import vllm_kimi_tools.parser.tool_parser  # noqa: F401

print("setup_vllm033: vllm", vllm.__version__, "from", vllm.__file__)
EOF
echo "$WANT" > "$STAMP"
