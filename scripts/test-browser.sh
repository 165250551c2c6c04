#!/usr/bin/env bash
# The browser end-to-end test (called by scripts/test.sh): Debian's chromium
# (apt-get, no browser download) driven by playwright-core (pinned in
# client/web/package-lock.json) against a real chatd and chatctl built
# here. Screenshots: client/web/test-results/ (or $E2E_ARTIFACTS).
# Without chromium this is a skip, except with CI=true, where it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

if ! [ -x /usr/bin/chromium ]; then
  echo "installing chromium from Debian (apt-get)"
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; } || true
fi
if ! [ -x /usr/bin/chromium ]; then
  if [ "${CI:-}" = true ]; then
    echo "FAIL: /usr/bin/chromium is missing (apt-get install chromium failed) and CI=true" >&2
    exit 1
  fi
  echo "SKIP: no /usr/bin/chromium (apt-get install chromium); the browser test did not run" >&2
  exit 0
fi

if ! [ -d client/web/node_modules/playwright-core ]; then
  (cd client/web && npm ci --no-audit --no-fund --loglevel=error)
fi
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/" ./cmd/chatd ./cmd/chatctl
cd client/web
CHATD_BIN="$bin/chatd" CHATCTL_BIN="$bin/chatctl" node e2e/run.mjs
