#!/usr/bin/env bash
# fuzz.sh [SECONDS_PER_TARGET]: builds the libFuzzer targets of fuzz/ with clang
# (ASan + UBSan) into build-fuzz/, replays every input of fuzz/regressions/ and
# fuzz/corpus/, then fuzzes each target for SECONDS_PER_TARGET seconds (default 15), one
# core, from a working corpus in build-fuzz/corpus/<target>/ (the tree's seeds merged in;
# it grows from run to run). Exits non-zero if any input crashes; a new crash's input is
# left in build-fuzz/crashes/<target>/: add it to fuzz/regressions/<target>/ with the fix.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
secs=${1:-15}
targets=(decode roundtrip fdstore config uri)

bash scripts/install-deps.sh  # clang and libfuzzer-14-dev among them

# Only the fuzz targets are built here: no tests, no bench (the g++ builds have those).
CC=clang CXX=clang++ cmake -S "$top" -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAGERD_FUZZ=ON \
  -DPAGERD_BUILD_TESTS=OFF -DPAGERD_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz --target pagerd_fuzzers -j "$(nproc)"

# -max_len: a datagram one byte over k_max_message_size (4096) must be seen too.
common=(-max_len=4200 -timeout=10 -rss_limit_mb=2048)
failed=()
for t in "${targets[@]}"; do
  bin=build-fuzz/fuzz/fuzz_$t
  inputs=()
  for d in "fuzz/regressions/$t" "fuzz/corpus/$t"; do
    if [ -d "$d" ]; then
      while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$d" -type f -print0 | sort -z)
    fi
  done
  work=build-fuzz/corpus/$t
  crashes=build-fuzz/crashes/$t
  mkdir -p "$work" "$crashes"
  echo "== fuzz_$t: ${#inputs[@]} regression and seed input(s)"
  if [ ${#inputs[@]} -ne 0 ] && ! "$bin" "${common[@]}" -artifact_prefix="$crashes/" "${inputs[@]}" \
      >"build-fuzz/fuzz_$t.replay.log" 2>&1; then
    tail -n 40 "build-fuzz/fuzz_$t.replay.log"
    failed+=("$t (replay)")
    continue
  fi
  if ! "$bin" "${common[@]}" -merge=1 "$work" "fuzz/corpus/$t" >"build-fuzz/fuzz_$t.merge.log" 2>&1; then
    tail -n 40 "build-fuzz/fuzz_$t.merge.log"
    failed+=("$t (merge)")
    continue
  fi
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  echo "== fuzz_$t: ${secs} s"
  if ! "$bin" "${common[@]}" "${dict[@]}" -max_total_time="$secs" -print_final_stats=1 \
      -artifact_prefix="$crashes/" "$work" >"build-fuzz/fuzz_$t.log" 2>&1; then
    tail -n 60 "build-fuzz/fuzz_$t.log"
    failed+=("$t")
    continue
  fi
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added)" "build-fuzz/fuzz_$t.log" |
    sed 's/^stat::/   /'
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "pagerd: fuzzing found crashes in: ${failed[*]} (inputs in build-fuzz/crashes/, logs in build-fuzz/fuzz_*.log)" >&2
  exit 1
fi
echo "pagerd: fuzzing found nothing"
