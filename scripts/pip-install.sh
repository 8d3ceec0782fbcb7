# Sourced by scripts/setup.sh and scripts/setup-airflow.sh, which set VENV and say().
#
# pip_install ARGS...: install into $VENV with uv, itself installed first (pinned in
# scripts/requirements.txt), or with pip when uv cannot be had. uv downloads and compiles
# bytecode in parallel: measured on a fresh 2-core machine, the pinned stack took 43 s
# instead of pip's 88 s. Bytecode is compiled at install time because a process that
# cannot write it (PYTHONDONTWRITEBYTECODE, read-only site-packages) would otherwise
# compile every module it imports, in every job and every Horovod rank.
pip_install() {
  if [ ! -x "$VENV/bin/uv" ]; then
    "$VENV/bin/pip" install -q "uv==$UV_VERSION" >/dev/null 2>&1 \
      || say "uv $UV_VERSION not available; installing with pip"
  fi
  if [ -x "$VENV/bin/uv" ]; then
    # pip's settings carry over: an index or a wheel folder set for pip on this machine,
    # and the system's certificates
    local settings=(UV_NATIVE_TLS=1)
    [ -n "${PIP_INDEX_URL:-}" ] && settings+=("UV_DEFAULT_INDEX=${UV_DEFAULT_INDEX:-$PIP_INDEX_URL}")
    case "${PIP_FIND_LINKS:-}" in
      http*://*) settings+=("UV_FIND_LINKS=${UV_FIND_LINKS:-$PIP_FIND_LINKS}") ;;
      ?*) [ -d "$PIP_FIND_LINKS" ] && settings+=("UV_FIND_LINKS=${UV_FIND_LINKS:-$PIP_FIND_LINKS}") ;;
    esac
    env "${settings[@]}" "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" "$@"
  else
    "$VENV/bin/pip" install -q "$@"
  fi
}

UV_VERSION="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$(dirname "${BASH_SOURCE[0]}")/requirements.txt")"
