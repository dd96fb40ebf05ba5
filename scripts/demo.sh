#!/usr/bin/env bash
# The main job: builds pagerd, starts the daemon with its defaults (socket
# /run/pagerd/pagerd.sock), maps a file through it with pagerctl, checks every byte
# against the file, shows the daemon's status, and stops it.
# FILE=path to map your own file instead of a generated 256 MiB one.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bash scripts/install-deps.sh
bash scripts/build.sh build

work=$(mktemp -d /var/tmp/pagerd-demo.XXXXXX)
daemon_pid=
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

file=${FILE:-$work/data.bin}
if [ -z "${FILE:-}" ]; then
  echo "== making a 256 MiB file of random bytes: $file"
  head -c $((256 << 20)) /dev/urandom >"$file"
fi

echo "== starting pagerd with its defaults"
build/daemon/pagerd &
daemon_pid=$!
for _ in $(seq 100); do
  build/pagerctl/pagerctl status >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || { echo "pagerd did not start" >&2; exit 1; }
  sleep 0.1
done

echo "== pagerctl cat: map the file through pagerd, touch every page from 4 threads in random order"
start=$(date +%s%N)
build/pagerctl/pagerctl cat "$file" --pattern random --threads 4 >"$work/out.bin"
end=$(date +%s%N)
cmp "$file" "$work/out.bin"
echo "   every byte matches the file ($(stat -c %s "$file") bytes in $(((end - start) / 1000000)) ms)"

echo "== pagerctl status"
build/pagerctl/pagerctl status
