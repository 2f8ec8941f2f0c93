#!/usr/bin/env bash
# Runs every fuzz target in the module for a short fixed time each, over the committed
# seed corpora (testdata/fuzz). CI calls this after the tests; a crash fails the run
# and leaves the crasher in testdata/fuzz for the next commit.
set -euo pipefail
cd "$(dirname "$0")/.."
time_each=${1:-15s}
status=0
while IFS= read -r pkg; do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)\(f \*testing\.F\)' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+).*/\1/' | sort -u); do
    echo "fuzz: $pkg $target ($time_each)"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$time_each" "$pkg" >/tmp/fuzz.$$.log 2>&1; then
      echo "fuzz: $pkg $target FAILED"; tail -n 40 /tmp/fuzz.$$.log; status=1
    fi
  done
done < <(grep -rlE '^func Fuzz[A-Za-z0-9_]+\(f \*testing\.F\)' --include='*_test.go' . | xargs -n1 dirname | sort -u | sed 's|^\./|github.com/layermesh/layermesh/|')
rm -f /tmp/fuzz.$$.log
exit $status
