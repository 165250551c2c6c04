#!/usr/bin/env bash
# The web client suite (client/web, called by scripts/test.sh):
#   1. npm ci of the pinned packages (package-lock.json; no binary downloads:
#      esbuild's platform binary is an npm optional dependency)
#   2. the TypeScript generated from proto/ (client/web/src/gen, ts-proto via
#      buf) is up to date, as gen/ is for Go
#   3. tsc type-check, the SDK's unit tests (node --test)
#   4. the web app bundle embedded in chatd (server/app/web) is up to date
# Fast when warm: npm ci is skipped while package-lock.json is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
WEB=client/web

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

step "web: npm ci (client/web)"
stamp=$WEB/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ "$WEB/package-lock.json" -nt "$stamp" ]; then
  (cd $WEB && npm ci --no-audit --no-fund --loglevel=error)
fi
make -s .tools/node_modules/.bin/buf

stale() {
  if git rev-parse --git-dir >/dev/null 2>&1 && [ -n "$(git status --porcelain -- "$1")" ]; then
    git status --porcelain -- "$1"
    echo "$1 is stale: $2, and commit the result" >&2
    exit 1
  fi
}

step "web: generated TypeScript is up to date"
.tools/node_modules/.bin/buf generate --template $WEB/buf.gen.yaml
stale $WEB/src/gen "run 'cd client/web && npm run generate'"

step "web: type-check and unit tests"
(cd $WEB && npx tsc --noEmit -p . && npm test --silent)

step "web: the embedded web app bundle is up to date"
(cd $WEB && node build.mjs)
stale server/app/web "run 'cd client/web && npm run build:app'"
