#!/usr/bin/env bash
# Moonshot's vendor verifier (Kimi-Vendor-Verifier's pre-flight suites) in an
# environment of its own, from its own lock file, never mixed with ours:
#   $KIMI_TOOLS_CACHE/kvv/verifier  a copy of ../shared/anchors/kvv-verifier
#                                   (pytest writes its reports beside it)
#   $KIMI_TOOLS_CACHE/kvv/venv      the packages its uv.lock pins
# The lock asks for Python >= 3.12; this machine kind has 3.11 only and no
# way to fetch another interpreter, so the locked versions are installed
# under 3.11 (`uv export --frozen`, then `uv pip install`): the suites run
# on it unmodified. Prints the verifier's directory; idempotent (a stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${KIMI_TOOLS_KVV:-../shared/anchors/kvv-verifier}
ROOT="${KIMI_TOOLS_CACHE:-$PWD/.cache}/kvv"
PY=${PYTHON:-python3}
if [[ ! -f "$SRC/uv.lock" ]]; then
  echo "setup_kvv: no verifier at $SRC (set KIMI_TOOLS_KVV)" >&2
  exit 3
fi
STAMP="$ROOT/.stamp"
WANT="$( (sha256sum scripts/setup_kvv.sh; find "$SRC" -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "$ROOT/verifier"
  exit 0
fi
mkdir -p "$ROOT"
rm -rf "$ROOT/verifier" "$ROOT/venv"
cp -r "$SRC" "$ROOT/verifier"
chmod -R u+w "$ROOT/verifier"
[[ -x "$ROOT/uv/bin/uv" ]] || {
  "$PY" -m venv "$ROOT/uv"
  "$ROOT/uv/bin/python" -m pip --disable-pip-version-check -q install "uv==0.13.9"
}
UV="$ROOT/uv/bin/uv"
(cd "$ROOT/verifier" && "$UV" export --frozen --format requirements-txt \
  --no-hashes --no-emit-project --quiet) > "$ROOT/requirements.txt"
"$UV" venv --quiet --python "$(command -v "$PY")" "$ROOT/venv"
"$UV" pip install --quiet --python "$ROOT/venv/bin/python" -r "$ROOT/requirements.txt"
"$ROOT/venv/bin/python" -c "import openai, httpx, jsonschema, pytest, xdist" >&2
echo "$WANT" > "$STAMP"
echo "$ROOT/verifier"
