#!/usr/bin/env bash
# The Python client suite (tests/python): stubs generated from proto/ by
# grpcio-tools, pytest against a chatd built from this tree; and
# schemathesis against that chatd's /openapi.json (test_rest_schema.py).
#
# The pinned packages of tests/python/requirements.txt live in a venv,
# .venv-test/ (git-ignored), created on first use and re-used until the
# requirements file or the Python version changes. Extra arguments go to
# pytest (e.g. scripts/test-python.sh -k stream -x).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

VENV="${VENV:-.venv-test}"
REQ=tests/python/requirements.txt
PY="${PYTHON:-python3}"

# A Python with venv and ensurepip (Debian splits them into python3-venv).
if ! command -v "$PY" >/dev/null || ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "installing python3 and python3-venv from Debian"
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q python3 python3-venv >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q python3 python3-venv >/dev/null; }
  PY=/usr/bin/python3
fi

want="$( { cat "$REQ"; "$PY" --version; } | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.requirements.sha256"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "creating $VENV from $REQ"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$REQ"
  echo "$want" >"$stamp"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/chatd" ./cmd/chatd

set +e
CHATD_BIN="$tmp/chatd" PYTHONDONTWRITEBYTECODE=1 \
  "$VENV/bin/python" -m pytest -p no:cacheprovider -q tests/python "$@"
rc=$?
set -e
case $rc in
  0) ;;
  5) echo "pytest collected no tests: the Python client suite is missing" >&2; exit 1 ;;
  *) echo "pytest failed (exit $rc)" >&2; exit "$rc" ;;
esac
