#!/usr/bin/env bash
# Runs every Go fuzz target for FUZZTIME each (default 6s; the suite's
# short run). `go test` alone already runs their seeds and
# testdata/fuzz/<Target>/ as regression tests; this explores beyond them.
#
#   scripts/fuzz.sh                      # every target, 6 s each
#   FUZZTIME=10m scripts/fuzz.sh         # long runs (or: make fuzz FUZZTIME=10m)
#   scripts/fuzz.sh FuzzChatFrame        # only the targets named
#
# A failing input is written to <package>/testdata/fuzz/<Target>/ and the
# run fails: fix the bug and commit that file as a regression input. The
# first run compiles the packages with coverage instrumentation (cached
# afterwards), which takes longer than the fuzzing itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
FUZZTIME="${FUZZTIME:-6s}"

# package target
targets=(
  "./server/chat FuzzChatFrame"
  "./server/chat FuzzCheckText"
  "./server/chat FuzzIdentifiers"
  "./server/store FuzzCanonicalUsername"
  "./server/app FuzzREST"
  "./server/auth FuzzParse"
  "./server/router/redis FuzzDecodeBatch"
)

# Every Fuzz function in the tree must be listed above.
listed=" $(printf '%s\n' "${targets[@]}" | awk '{print $2}' | tr '\n' ' ') "
for f in $(grep -rhoE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' --include='*_test.go' server client cmd | sed -E 's/^func (Fuzz[^(]+).*/\1/'); do
  case "$listed" in *" $f "*) ;; *) echo "fuzz target $f is not listed in scripts/fuzz.sh" >&2; exit 1 ;; esac
done

start=$SECONDS
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  echo "--- $name ($pkg, $FUZZTIME)"
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 2s "$pkg" >"${TMPDIR:-/tmp}/fuzz-$name.log" 2>&1; then
    cat "${TMPDIR:-/tmp}/fuzz-$name.log"
    echo "$name failed: the input is in $pkg/testdata/fuzz/$name/; fix the bug and commit it as a regression input" >&2
    exit 1
  fi
  grep -E '^fuzz: elapsed: .*execs' "${TMPDIR:-/tmp}/fuzz-$name.log" | tail -1
done
echo "fuzzing took $((SECONDS - start)) s"
