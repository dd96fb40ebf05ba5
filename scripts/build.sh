#!/usr/bin/env bash
# build.sh DIR [cmake options...]: configures and builds pagerd into DIR.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=$1
shift
cmake -S "$top" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPAGERD_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)"
