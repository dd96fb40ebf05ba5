#!/usr/bin/env bash
# Installs the Debian 12 packages pagerd needs to build and test (and gnuplot-nox for
# pagerd-bench --plot; python3, python3-numpy, git and sqlite3: the unmodified programs that
# tests/programs and pagerd-bench --cases preload run under pagerd-run), if any is missing.
set -euo pipefail
packages=(g++ make cmake pkg-config binutils liburing-dev libspdlog-dev libcli11-dev catch2 libsystemd-dev systemd
  systemd-container debootstrap gnuplot-nox clang libfuzzer-14-dev fuse3 libfuse3-dev libnbd-dev libnbd-bin nbdkit
  python3 python3-numpy git sqlite3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "pagerd: installing missing Debian packages: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "pagerd: run as root (or install them yourself: apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
