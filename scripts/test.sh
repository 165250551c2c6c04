#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run):
#   1. generated code in gen/ is up to date with proto/ (buf generate + diff)
#   2. buf lint, buf breaking against main, gofmt, go vet
#   3. the real services (Redis, the CQL server) are up: scripts/services.sh up
#   4. every Go test (the push tests need scripts/push-tools.sh: web-push-testing
#      from npm, http-ece from PyPI, both pinned), then the concurrency-heavy
#      packages again under -race
#   5. the Python client suite (scripts/test-python.sh: pinned PyPI packages
#      in .venv-test/, stubs generated from proto/, a real chatd), with
#      schemathesis against the REST surface's /openapi.json
#   6. the web client suite (scripts/test-web.sh: TypeScript generated from
#      proto/ and the embedded web app bundle up to date, SDK unit tests)
#   7. the browser end-to-end test (scripts/test-browser.sh: Debian's
#      chromium by apt-get, playwright-core, a real chatd and chatctl)
#   8. every Go fuzz target for a short execution budget (scripts/fuzz.sh; FUZZTIME)
# With CI=true a missing service is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "tools: buf from npm (.tools/)"
make -s .tools/node_modules/.bin/buf
BUF=.tools/node_modules/.bin/buf

step "generated code is up to date"
$BUF generate
if git rev-parse --git-dir >/dev/null 2>&1; then
  if [ -n "$(git status --porcelain -- gen)" ]; then
    git status --porcelain -- gen
    git diff --stat -- gen
    echo "gen/ is stale: run 'make generate' and commit the result" >&2
    exit 1
  fi
fi

step "lint"
$BUF lint
unformatted=$(gofmt -l $(find . -name '*.go' -not -path './gen/*' -not -path './.tools/*' -not -path './.services/*'))
if [ -n "$unformatted" ]; then echo "gofmt needed:"; echo "$unformatted"; exit 1; fi
go vet ./...
if git rev-parse --verify -q main >/dev/null && git cat-file -e main:proto 2>/dev/null; then
  step "buf breaking against main"
  $BUF breaking --against '.git#branch=main'
fi

if ! command -v jq >/dev/null; then
  step "tools: jq from Debian (the README's chatctl steps, run by a test, use it)"
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q jq >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q jq >/dev/null; }
fi

if [ -x scripts/services.sh ]; then
  step "services: Redis and the CQL server"
  scripts/services.sh up
  # REDIS_ADDR and CQL_HOSTS of the services that are up.
  set -a; eval "$(scripts/services.sh env)"; set +a
fi

step "tools: the push tests' Web Push service and http-ece (scripts/push-tools.sh)"
scripts/push-tools.sh

step "go test ./..."
go test -count=1 -timeout 45m ./...

step "go test -race (core packages)"
go test -race -count=1 -timeout 20m ./server/hub/... ./server/push/ ./server/deliver/... ./server/sequence/... ./server/router/... ./server/ratelimit/... ./server/store/... ./client/...

step "Python client suite and schemathesis (tests/python)"
scripts/test-python.sh

step "web client suite (client/web: generated TypeScript, bundle, unit tests)"
scripts/test-web.sh

step "browser end-to-end test (chromium + playwright-core, scripts/test-browser.sh)"
scripts/test-browser.sh

step "fuzz targets, a short execution budget each (scripts/fuzz.sh)"
scripts/fuzz.sh

step "all tests passed"
