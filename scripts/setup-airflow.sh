#!/usr/bin/env bash
# One idempotent set-up step for running lakeforge's pipelines under Airflow:
#   1. a virtualenv at .venv-airflow with Airflow 3 and the Apache Spark provider
#      (its own environment: Airflow's dependencies do not mix with the project's
#      pinned Spark/TensorFlow stack; tasks run the project's spark-submit instead),
#   2. an Airflow home under LAKEFORGE_HOME (AIRFLOW_HOME, SQLite metadata DB) whose
#      DAG folder is pipelines/dags, migrated with `airflow db migrate`.
# A second run with nothing changed only checks and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${AIRFLOW_VENV:-$ROOT/.venv-airflow}"
PY="${LAKEFORGE_PYTHON:-python3.11}"
AIRFLOW_VERSION="3.3.2"
SPARK_PROVIDER_VERSION="6.3.4"
LAKEFORGE_HOME="${LAKEFORGE_HOME:-$ROOT/data}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$LAKEFORGE_HOME/airflow}"
STAMP="$VENV/.lakeforge-airflow-setup"

say() { printf '[setup-airflow] %s\n' "$*"; }
die() { printf '[setup-airflow] FAILED: %s\n' "$*" >&2; exit 1; }
source scripts/pip-install.sh

fingerprint() {
  cat scripts/setup-airflow.sh scripts/pip-install.sh | sha256sum | cut -d' ' -f1
}

airflow_env() {
  command -v "$PY" >/dev/null || PY=python3
  "$PY" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
    || die "Python >= 3.10 is required for Airflow (tried $PY); set LAKEFORGE_PYTHON"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PY" -m venv "$VENV" || die "could not create virtualenv $VENV"
  fi
  say "installing apache-airflow $AIRFLOW_VERSION + Spark provider $SPARK_PROVIDER_VERSION (once)"
  pip_install \
    "apache-airflow==$AIRFLOW_VERSION" \
    "apache-airflow-providers-apache-spark==$SPARK_PROVIDER_VERSION" \
    > "$VENV/pip-install.log" 2>&1 \
    || die "installing Airflow failed; see $VENV/pip-install.log"
}

airflow_home() {
  mkdir -p "$AIRFLOW_HOME"
  # Settings go through the environment of whoever runs Airflow (see README); the
  # generated airflow.cfg keeps Airflow's defaults.
  export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/pipelines/dags"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  if [ -f "$AIRFLOW_HOME/.lakeforge-migrated" ] \
     && [ "$(cat "$AIRFLOW_HOME/.lakeforge-migrated")" = "$AIRFLOW_VERSION" ]; then
    say "metadata DB up to date ($AIRFLOW_HOME)"
    return 0
  fi
  say "migrating the metadata DB in $AIRFLOW_HOME"
  "$VENV/bin/airflow" db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 \
    || die "airflow db migrate failed; see $AIRFLOW_HOME/db-migrate.log"
  echo "$AIRFLOW_VERSION" > "$AIRFLOW_HOME/.lakeforge-migrated"
}

check() {
  "$VENV/bin/python" - <<'EOF' || die "import check failed (see the traceback above)"
import airflow
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator  # noqa: F401
print(f"[setup-airflow] ok: airflow {airflow.__version__}")
EOF
}

main() {
  local start=$SECONDS
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ]; then
    say "virtualenv up to date ($VENV)"
  else
    airflow_env
    fingerprint > "$STAMP"
  fi
  check
  if [ "${1:-}" != "--no-db" ]; then
    airflow_home
  fi
  say "done in $((SECONDS - start)) s (AIRFLOW_HOME=$AIRFLOW_HOME)"
}

main "$@"
