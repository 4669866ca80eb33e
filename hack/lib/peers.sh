# hack/lib/peers.sh — sourced by hack/test.sh and hack/demo.sh: the real peers both need, installed
# when missing: Debian's redis-server, and the virtualenv with the pinned Python peers
# (tests/peers/requirements.txt: the real `arq` the legacy workers run, moto for S3).
#
# peers_redis_server: installs redis-server from Debian packages when it is not on PATH (as root;
# otherwise one line saying how, and a non-zero status).
peers_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing: install it with 'sudo apt-get install -y redis-server'" >&2
    return 1
  fi
}


# peers_venv: creates (once per requirements hash, under $DEDUP2D_CACHE/venv-<hash>) or reuses the
# virtualenv and exports DEDUP2D_PYTHON, its interpreter. Needs ROOT (the repository) and DEDUP2D_CACHE.
peers_venv() {
  local req="$ROOT/tests/peers/requirements.txt" hash venv
  hash="$(sha256sum "$req" | cut -c1-12)"
  venv="$DEDUP2D_CACHE/venv-$hash"
  if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    touch "$venv/.complete"
  fi
  export DEDUP2D_PYTHON="$venv/bin/python"
}
