#!/usr/bin/env bash
# Wake-up placement: the read table of pagerd-bench against daemons that differ only in how
# their workers wait for faults. Usage: bench/placement.sh [BUILD_DIR] [extra pagerd-bench
# options, e.g. --size 256MiB --repeat 3]. Prints one table per variant.
set -euo pipefail
build=${1:-build}; shift || true
bench="$build/bench/pagerd-bench"
variants=(
  ""                                   # default: one worker per CPU, sleep when idle
  "--daemon-arg=--poll-us=50"          # keep reading the userfaultfds 50 us after a fault
  "--daemon-arg=--poll-us=200"
  "--daemon-arg=--pin-workers=true"    # worker i on CPU i
  "--daemon-arg=--workers=1"           # one worker for everything
)
for v in "${variants[@]}"; do
  echo "== pagerd ${v:-(defaults)}"
  # shellcheck disable=SC2086
  "$bench" --cases read $v "$@" | sed -n '/^#  pagerd side          baseline/,/^daemon memory/p'
done
