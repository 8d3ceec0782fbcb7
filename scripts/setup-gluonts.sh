#!/usr/bin/env bash
# One idempotent set-up step for the DeepAR benchmark's peer: a virtualenv at
# .venv-gluonts with GluonTS's DeepAR on its PyTorch backend. It is the benchmark's
# alone: PyTorch and Lightning do not mix with the project's pinned TensorFlow stack,
# so bench/bench_deepar.py runs the peer in this environment as a subprocess.
# PyPI's torch wheel for Linux brings NVIDIA's CUDA libraries (a few GB on the first
# run); the peer itself trains on the CPU. A second run with nothing changed only
# checks and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${GLUONTS_VENV:-$ROOT/.venv-gluonts}"
PY="${LAKEFORGE_PYTHON:-python3.11}"
GLUONTS_VERSION="0.17.0"
TORCH_VERSION="2.15.0"
LIGHTNING_VERSION="2.6.6"
PYARROW_VERSION="26.0.1"   # reads the series the benchmark writes
STAMP="$VENV/.lakeforge-gluonts-setup"

say() { printf '[setup-gluonts] %s\n' "$*"; }
die() { printf '[setup-gluonts] FAILED: %s\n' "$*" >&2; exit 1; }
source scripts/pip-install.sh

fingerprint() {
  cat scripts/setup-gluonts.sh scripts/pip-install.sh | sha256sum | cut -d' ' -f1
}

gluonts_env() {
  command -v "$PY" >/dev/null || PY=python3
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV" || die "could not create virtualenv $VENV"
  fi
  say "installing gluonts $GLUONTS_VERSION with torch $TORCH_VERSION (once; a few GB)"
  pip_install \
    "gluonts[torch]==$GLUONTS_VERSION" "torch==$TORCH_VERSION" \
    "lightning==$LIGHTNING_VERSION" "pytorch-lightning==$LIGHTNING_VERSION" \
    "pyarrow==$PYARROW_VERSION" \
    > "$VENV/pip-install.log" 2>&1 \
    || die "installing GluonTS failed; see $VENV/pip-install.log"
}

check() {
  "$VENV/bin/python" - <<'PYEOF' || die "import check failed (see the traceback above)"
import gluonts
import torch
from gluonts.torch.model.deepar import DeepAREstimator  # noqa: F401
print(f"[setup-gluonts] ok: gluonts {gluonts.__version__}, torch {torch.__version__}")
PYEOF
}

main() {
  local start=$SECONDS
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ]; then
    say "virtualenv up to date ($VENV)"
  else
    gluonts_env
    fingerprint > "$STAMP"
  fi
  check
  say "done in $((SECONDS - start)) s"
}

main "$@"
