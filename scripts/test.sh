#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test against the
# real daemon. Then the same suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
# PAGERD_SANITIZE=0 skips the sanitizer pass. Last, the libFuzzer targets (scripts/fuzz.sh,
# about 15 s each); PAGERD_FUZZ=0 skips them.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/install-deps.sh

echo "== build and test (build/)"
bash scripts/build.sh build
(cd build && ctest --output-on-failure -j "$(nproc)")

if [ "${PAGERD_SANITIZE:-1}" != 0 ]; then
  echo "== build and test with ASan + UBSan (build-asan/)"
  bash scripts/build.sh build-asan -DPAGERD_ASAN=ON -DPAGERD_UBSAN=ON -DPAGERD_BUILD_BENCH=OFF
  (cd build-asan && ctest --output-on-failure -j "$(nproc)")
fi

if [ "${PAGERD_FUZZ:-1}" != 0 ]; then
  echo "== fuzz (build-fuzz/)"
  bash scripts/fuzz.sh
fi
