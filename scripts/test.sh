#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test against the
# real daemon. Then the same suite again under AddressSanitizer + UndefinedBehaviorSanitizer,
# and again under ThreadSanitizer. Last, the libFuzzer targets (scripts/fuzz.sh, about 15 s
# each). Each pass after the first can be skipped:
#   PAGERD_SANITIZE=0  skips the ASan + UBSan pass (build-asan/)
#   PAGERD_TSAN=0      skips the ThreadSanitizer pass (build-tsan/)
#   PAGERD_FUZZ=0      skips the fuzzing (build-fuzz/)
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

if [ "${PAGERD_TSAN:-1}" != 0 ]; then
  echo "== build and test with TSan (build-tsan/)"
  bash scripts/build.sh build-tsan -DPAGERD_TSAN=ON -DPAGERD_BUILD_BENCH=OFF
  # halt_on_error: the first race report ends the process (exit 66), so the test fails.
  # The daemon, pagerctl and every client process the tests start inherit TSAN_OPTIONS.
  tsan_options=halt_on_error=1:second_deadlock_stack=1
  # g++ 12's ThreadSanitizer puts its shadow memory at fixed addresses that assume at most
  # 28 bits of mmap randomisation; with more (vm.mmap_rnd_bits=32 on some kernels) a program
  # may die at start with "FATAL: ThreadSanitizer: unexpected memory mapping". Then the
  # tests run with ASLR off (setarch -R, inherited by every process they start). Kernel
  # 6.18 with vm.mmap_rnd_bits=28 (this project's VMs) needs none of it.
  tsan_run=()
  if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ] \
      || ! TSAN_OPTIONS=$tsan_options build-tsan/daemon/pagerd --version >/dev/null 2>&1; then
    echo "ThreadSanitizer needs ASLR off here: the tests run under setarch -R"
    tsan_run=(setarch "$(uname -m)" -R)
  fi
  # Without nspawn.restart (label nspawn): its Debian tree has no libtsan2 (adding it makes
  # debootstrap build the cached tree again, from a mirror), TSAN_OPTIONS would not reach
  # pagerd.service under systemd, and the restart from the descriptor store it shows runs
  # under ThreadSanitizer in test_fdstore already. tsan.fault-path-race-is-reported passes
  # only if ThreadSanitizer reports the race it makes in the daemon's fault path.
  (cd build-tsan && TSAN_OPTIONS=$tsan_options "${tsan_run[@]}" ctest --output-on-failure -j "$(nproc)" -LE nspawn)
fi

if [ "${PAGERD_FUZZ:-1}" != 0 ]; then
  echo "== fuzz (build-fuzz/)"
  bash scripts/fuzz.sh
fi
