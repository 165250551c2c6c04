#!/usr/bin/env bash
# The push services of the push tests, pinned, installed once and re-used
# while their pins are unchanged (scripts/test.sh runs it before the Go
# tests; run it by hand before `go test ./server/push/...`):
#   - tests/push/node_modules: the npm package web-push-testing 1.2.2 (a
#     mock Web Push service that decrypts aes128gcm and verifies VAPID),
#     from tests/push/package-lock.json (npm ci);
#   - .venv-push/: PyPI http-ece and cryptography (tests/push/requirements.txt),
#     the independent decrypt and VAPID JWT check of tests/push/check_webpush.py.
set -euo pipefail
cd "$(dirname "$0")/.."

lock=tests/push/package-lock.json
want="$(sha256sum "$lock" | cut -d' ' -f1)"
stamp=tests/push/node_modules/.lock.sha256
if [ ! -f tests/push/node_modules/web-push-testing/src/bin/server.js ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing web-push-testing (tests/push, npm ci)"
  (cd tests/push && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$stamp"
fi

VENV="${PUSH_VENV:-.venv-push}"
REQ=tests/push/requirements.txt
PY="${PYTHON:-python3}"
want="$( { cat "$REQ"; "$PY" --version; } | sha256sum | cut -d' ' -f1)"
stamp="$VENV/.requirements.sha256"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "creating $VENV from $REQ"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$REQ"
  echo "$want" >"$stamp"
fi
