#!/usr/bin/env bash
# Runs every Go fuzz target for a short budget each (the suite's run): a
# number of executions per target (-fuzztime Nx, a few seconds each), or
# FUZZTIME for every target when set. `go test` alone already runs their
# seeds and testdata/fuzz/<Target>/ as regression tests; this explores
# beyond them.
#
#   scripts/fuzz.sh                      # every target, its execution budget
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
FUZZTIME="${FUZZTIME:-}"

# package target budget. The suite's budgets are execution counts, not
# durations: Go 1.26's fuzz coordinator can fail a duration run at its
# deadline with a bare "context deadline exceeded" and no input
# (go.dev/issue/75804, fixed in Go 1.27), which a count cannot race.
targets=(
  "./server/chat FuzzChatFrame 300x"
  "./server/chat FuzzCheckText 20000x"
  "./server/chat FuzzIdentifiers 20000x"
  "./server/store FuzzCanonicalUsername 20000x"
  "./server/app FuzzREST 1000x"
  "./server/auth FuzzParse 20000x"
  "./server/router/redis FuzzDecodeBatch 20000x"
)

# Every Fuzz function in the tree must be listed above.
listed=" $(printf '%s\n' "${targets[@]}" | awk '{print $2}' | tr '\n' ' ') "
for f in $(grep -rhoE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' --include='*_test.go' server client cmd | sed -E 's/^func (Fuzz[^(]+).*/\1/'); do
  case "$listed" in *" $f "*) ;; *) echo "fuzz target $f is not listed in scripts/fuzz.sh" >&2; exit 1 ;; esac
done

# inputs DIR: how many inputs a target's corpus directory holds.
inputs() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }

start=$SECONDS
for t in "${targets[@]}"; do
  read -r pkg name budget <<<"$t"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  budget=${FUZZTIME:-$budget}
  log="${TMPDIR:-/tmp}/fuzz-$name.log"
  echo "--- $name ($pkg, $budget)"
  for try in 1 2; do
    before=$(inputs "$pkg/testdata/fuzz/$name")
    if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$budget" -fuzzminimizetime 2s "$pkg" >"$log" 2>&1; then
      break
    fi
    after=$(inputs "$pkg/testdata/fuzz/$name")
    # A duration run that ends with only the coordinator's deadline error
    # and wrote no input is go.dev/issue/75804: run it once more.
    if [ "$try" = 1 ] && [ "$after" = "$before" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written' "$log"; then
      echo "$name: Go's fuzz-deadline race (go.dev/issue/75804), no input written; again"
      continue
    fi
    cat "$log"
    echo "$name failed: the input is in $pkg/testdata/fuzz/$name/; fix the bug and commit it as a regression input" >&2
    exit 1
  done
  grep -E '^fuzz: elapsed: .*execs' "${TMPDIR:-/tmp}/fuzz-$name.log" | tail -1
done
echo "fuzzing took $((SECONDS - start)) s"
