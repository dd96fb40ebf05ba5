#!/usr/bin/env bash
# run.sh: the test nspawn.restart, run by CTest (tests/nspawn/CMakeLists.txt sets the
# environment). pagerd under a real systemd, in a systemd-nspawn container:
#  1. a pristine Debian 12 tree, made with debootstrap once and kept in
#     $PAGERD_NSPAWN_CACHE/bookworm (remade when missing, broken, or made for another $key),
#     copied afresh for this run; the pristine tree is never booted or changed;
#  2. the build installed into the copy (DESTDIR=<copy> cmake --install, with the prefix the
#     build was configured for, which is where pagerd.service and tmpfiles.d look), plus the
#     test client (client.cpp) and its two files;
#  3. the copy booted with systemd-nspawn; sysusers.d and tmpfiles.d run at boot;
#     `systemctl enable --now pagerd.socket`; the client connects, which starts
#     pagerd.service (socket activation); it dirties a Shared region and faults slowly
#     through a 64 MiB read-only one;
#  4. while it faults: `systemctl kill -s KILL pagerd.service`; systemd restarts the service
#     (Restart=on-failure) with the client's descriptors from its descriptor store;
#  5. the client exits 0 (every byte right, the flush done, the connection alive); the
#     Shared file holds the writes from before and after the kill; the daemon's journal says
#     it took the client back from the store; a second kill, with no client left, restarts
#     it with an empty store; the container powers off, pagerd stopping cleanly; the copy
#     is removed.
# Prints "PASS nspawn.restart" or "FAIL nspawn.restart: why" last; exits non-zero on failure.
# PAGERD_NSPAWN_KEEP=1 keeps the copy (and its journal in var/log/journal) for a look.
# PAGERD_NSPAWN_PREFIX=DIR installs with --prefix DIR instead of the configured prefix.
set -euo pipefail
name=nspawn.restart
start=$SECONDS
log() { printf '[%3ds] %s\n' $((SECONDS - start)) "$*"; }

work=$PAGERD_WORK_DIR
root=$work/root                     # this run's copy of the tree
console=$work/console.log           # the container's console
client_log=$work/client.log
machine=pagerd-ns-$$
cache=$PAGERD_NSPAWN_CACHE/bookworm
# The packages of the tree: systemd, and every library pagerd, pagerctl and the client load
# (ldd), the sanitizer runtimes included so that an ASan/UBSan build runs in the same tree.
includes=systemd,systemd-sysv,dbus,libsystemd0,liburing2,libspdlog1.10,libfmt9,libstdc++6,libgcc-s1,libasan8,libubsan1,libnbd0
# The tree in the cache is used only when it was made with exactly this; change it (or
# $includes) to have it made again.
key="pagerd-nspawn tree 1: debootstrap --variant=minbase --include=$includes bookworm"
prefix=${PAGERD_NSPAWN_PREFIX:-$PAGERD_INSTALL_PREFIX}
in_client=/opt/pagerd-nspawn/pagerd-nspawn-client
in_data=/srv/pagerd-nspawn
started_file=/run/pagerd-nspawn.started
readdone_file=/run/pagerd-nspawn.readdone

nspawn_pid=""    # `timeout` around systemd-nspawn
init_pid=""      # the container's PID 1, as the host sees it
client_pid=""    # nsenter running the client inside
booted=0         # the container was started
cgroups=()       # this run's cgroups (one per hierarchy nspawn uses)
finished=0
err=""

# --- helpers -------------------------------------------------------------------------------

# rm -rf DIR after unmounting anything under it (debootstrap mounts proc and sys in its
# target), never crossing into another file system.
safe_rm() {
  local dir m
  [ -e "$1" ] || return 0
  dir=$(realpath "$1")
  case $dir in / | /usr | /var | /etc | /srv | /opt | /tmp | "") return 1 ;; esac
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r \
    | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$dir"
}

container_alive() { [ -n "$init_pid" ] && [ -d "/proc/$init_pid" ]; }

# The container's PID 1: the descendant of systemd-nspawn that is PID 1 in its own namespace.
find_init() {
  local level=("$nspawn_pid") next p q
  for _ in 1 2 3; do
    next=()
    for p in "${level[@]}"; do
      for q in $(pgrep -P "$p"); do
        if awk '/^NSpid:/ { found = 1; exit !(NF >= 3 && $NF == 1) } END { if (!found) exit 1 }' \
             "/proc/$q/status" 2>/dev/null; then
          echo "$q"
          return 0
        fi
        next+=("$q")
      done
    done
    level=("${next[@]}")
    [ ${#level[@]} -gt 0 ] || break
  done
  return 1
}

# inside SECONDS CMD...: CMD as root in the container (all its namespaces), clean environment.
inside() {
  local t=$1
  shift
  timeout -k 5 "$t" "$NSENTER" -t "$init_pid" -a -- env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# One property of a unit, as `systemctl show` has it now.
prop() { inside 20 systemctl show -p "$2" --value "$1" 2>/dev/null; }

# wait_restart RESTARTS MAINPID: until systemd has restarted pagerd.service after a kill
# (NRestarts above RESTARTS, active, another main PID); sets $restarts and $main2.
wait_restart() {
  local show active deadline=$((SECONDS + 30))
  while :; do
    show=$(inside 10 systemctl show -p NRestarts -p ActiveState -p SubState -p MainPID pagerd.service) || true
    restarts=$(sed -n 's/^NRestarts=//p' <<< "$show")
    active=$(sed -n 's/^ActiveState=//p' <<< "$show")
    main2=$(sed -n 's/^MainPID=//p' <<< "$show")
    if [ "${restarts:-0}" -gt "$1" ] && [ "$active" = active ] && [ "${main2:-0}" != 0 ] \
       && [ "$main2" != "$2" ]; then
      return 0
    fi
    [ $SECONDS -lt $deadline ] \
      || fail "systemd did not restart pagerd.service within 30 s of the kill: $(tr '\n' ' ' <<< "$show")"
    sleep 0.1
  done
}

journal() {  # the pagerd units' journal, from the running container or from the copy's disk
  if [ $booted = 0 ]; then
    return 0
  elif container_alive; then
    inside 30 journalctl --no-pager -o short-monotonic -u pagerd.socket -u pagerd.service "$@"
  elif [ -x "$root/usr/bin/journalctl" ]; then  # the tree's own journalctl, on its journal
    chroot "$root" journalctl --no-pager -o short-monotonic -D /var/log/journal \
      -u pagerd.socket -u pagerd.service "$@"
  fi
}

diagnostics() {
  echo "--- diagnostics"
  if [ -s "$client_log" ]; then echo "--- client output"; cat "$client_log"; fi
  if container_alive; then
    echo "--- systemctl status pagerd.socket pagerd.service (inside)"
    inside 20 systemctl status --no-pager -l pagerd.socket pagerd.service 2>&1 | head -40
    echo "--- failed units (inside)"
    inside 20 systemctl --failed --no-pager 2>&1 | head -20
  fi
  echo "--- journalctl -u pagerd.socket -u pagerd.service"
  journal 2>&1 | tail -n 80
  if [ -s "$console" ]; then
    echo "--- container console (last lines)"
    tail -n 25 "$console" | sed 's/\x1b\[[0-9;]*m//g'
  fi
}

stop_container() {
  [ -n "$client_pid" ] && kill -KILL "$client_pid" 2>/dev/null
  if container_alive; then kill -KILL "$init_pid" 2>/dev/null; fi  # the whole PID namespace
  if [ -n "$nspawn_pid" ]; then
    kill -TERM "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  [ -n "$client_pid" ] && wait "$client_pid" 2>/dev/null
  nspawn_pid="" client_pid=""
}

cleanup() {
  stop_container
  local d
  for d in "${cgroups[@]}"; do
    for _ in $(seq 20); do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$d" ] || break
      sleep 0.1
    done
    [ ! -d "$d" ] || echo "warning: cannot remove cgroup $d"
  done
  cgroups=()
  if [ "${PAGERD_NSPAWN_KEEP:-0}" = 1 ]; then
    echo "kept the container tree: $root"
  else
    safe_rm "$root" || echo "warning: cannot remove $root"
  fi
}

fail() {
  trap - ERR
  set +e
  echo "--- failed: $*"
  diagnostics
  cleanup
  finished=1
  echo "FAIL $name: $*"
  exit 1
}

on_exit() {
  local rc=$?
  [ $finished = 1 ] && return
  trap - ERR
  set +e
  echo "--- run.sh stopped unexpectedly (exit code $rc)"
  diagnostics
  cleanup
  echo "FAIL $name: ${err:-run.sh exited with $rc}"
  exit 1
}
trap on_exit EXIT
trap 'err="command failed (line $LINENO): $BASH_COMMAND"' ERR
trap 'fail "interrupted by a signal"' INT TERM HUP

# --- 0. what the test needs --------------------------------------------------------------------

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, systemd-nspawn, nsenter)"
for tool in SYSTEMD_NSPAWN DEBOOTSTRAP NSENTER; do
  path=${!tool:-}
  if [ -z "$path" ] || [[ $path == *NOTFOUND ]] || [ ! -x "$path" ]; then
    fail "$tool not found at configure time ('${path}'): apt-get install systemd-container debootstrap (scripts/install-deps.sh), then reconfigure"
  fi
done
[ -x "$PAGERD_CLIENT" ] || fail "the test client $PAGERD_CLIENT is not built"
[ -x "$PAGERD_DAEMON" ] || fail "pagerd $PAGERD_DAEMON is not built"
mkdir -p "$work"
safe_rm "$root" || fail "cannot remove an old tree at $root"
rm -f "$console" "$client_log"

# --- 1. the pristine tree, then this run's copy -----------------------------------------------

tree_broken() {  # why the cached tree cannot be used, or nothing
  local t=$cache/root p st
  [ -f "$cache/key" ] || { echo "no tree yet"; return; }
  [ "$(cat "$cache/key")" = "$key" ] || { echo "made for another key ($(cat "$cache/key"))"; return; }
  # (-e, not -x: sbin/init is an absolute symbolic link, which would resolve on the host)
  for f in usr/lib/systemd/systemd usr/bin/systemctl usr/bin/journalctl sbin/init usr/bin/ldd; do
    [ -e "$t/$f" ] || [ -L "$t/$f" ] || { echo "$f is missing"; return; }
  done
  for p in ${includes//,/ }; do
    st=$(dpkg-query --admindir="$t/var/lib/dpkg" -W -f='${db:Status-Status}' "$p" 2>/dev/null)
    [ "$st" = installed ] || { echo "package $p is not installed"; return; }
  done
  [ ! -e "$t/etc/.updated" ] || echo "it was booted (etc/.updated exists)"
}

mkdir -p "$cache" || fail "cannot create $cache"
exec {lock}> "$cache/lock"
flock -w 320 "$lock" || fail "another run has held $cache/lock for over 320 s"
why=$(tree_broken)
if [ -n "$why" ]; then
  log "making the Debian 12 tree in $cache/root ($why): debootstrap, about a minute"
  safe_rm "$cache/root.new" && safe_rm "$cache/root" && rm -f "$cache/key" \
    || fail "cannot clear $cache"
  # An empty PAGERD_NSPAWN_MIRROR leaves the choice to debootstrap (its default mirror).
  mirror=()
  [ -n "${PAGERD_NSPAWN_MIRROR:-}" ] && mirror=("$PAGERD_NSPAWN_MIRROR")
  if ! timeout -k 10 300 "$DEBOOTSTRAP" --variant=minbase --include="$includes" bookworm \
         "$cache/root.new" "${mirror[@]}" > "$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log"
    safe_rm "$cache/root.new"
    fail "debootstrap of bookworm failed (log: $work/debootstrap.log)"
  fi
  mv "$cache/root.new" "$cache/root"
  echo "$key" > "$cache/key"
  why=$(tree_broken)
  [ -z "$why" ] || fail "the tree debootstrap made is not usable: $why"
  log "made the tree"
else
  log "using the cached tree $cache/root"
fi
cp -a "$cache/root" "$root" || fail "cannot copy $cache/root to $root"
flock -u "$lock"
exec {lock}>&-
log "copied it to $root ($(du -sh "$root" | cut -f1))"

# --- 2. install the build and the client into the copy -------------------------------------

if ! DESTDIR=$root "$CMAKE" --install "$PAGERD_BUILD_DIR" --prefix "$prefix" > "$work/install.log" 2>&1; then
  cat "$work/install.log"
  fail "DESTDIR=$root cmake --install $PAGERD_BUILD_DIR --prefix $prefix failed"
fi
installed() {  # the path (inside the tree) cmake --install gave the file ending in /$1
  awk -v r="$root" -v s="/$1" '($2 == "Installing:" || $2 == "Up-to-date:") && index($3, r "/") == 1 &&
    substr($3, length($3) - length(s) + 1) == s { print substr($3, length(r) + 1); exit }' "$work/install.log"
}
service=$(installed 'systemd/system/pagerd.service')
socket=$(installed 'systemd/system/pagerd.socket')
tmpfiles=$(installed 'tmpfiles.d/pagerd.conf')
sysusers=$(installed 'sysusers.d/pagerd.conf')
for f in service socket tmpfiles sysusers; do
  [ -n "${!f}" ] || { cat "$work/install.log"; fail "cmake --install installed no $f file of pagerd"; }
done
log "installed with --prefix $prefix: $service, $(dirname "$tmpfiles"), $(dirname "$sysusers")"
# Where the files went must be where systemd and the units look.
[ "$(dirname "$socket")" = "$(dirname "$service")" ] || fail "pagerd.socket went to $socket, pagerd.service to $service"
case $(dirname "$service") in
  /etc/systemd/system | /usr/local/lib/systemd/system | /usr/lib/systemd/system | /lib/systemd/system) ;;
  *) fail "pagerd.service went to $(dirname "$service"), where systemd does not look for units" ;;
esac
exec_start=$(sed -nE 's/^ExecStart=([^ ]+).*/\1/p' "$root$service")
conf=$(sed -nE 's/^ExecStart=.* --config ([^ ]+).*/\1/p' "$root$service")
[ -x "$root$exec_start" ] \
  || fail "pagerd.service starts $exec_start, which the install (--prefix $prefix, the build configured for $PAGERD_INSTALL_PREFIX) did not put there"
read -r _ tmp_conf _ _ _ _ tmp_sample < <(awk '$1 == "C"' "$root$tmpfiles") || true
[ "$tmp_conf" = "$conf" ] || fail "pagerd.service reads $conf, tmpfiles.d creates '$tmp_conf'"
[ -f "$root$tmp_sample" ] \
  || fail "tmpfiles.d copies $tmp_sample to $conf, but the install put no sample there (--prefix $prefix, configured for $PAGERD_INSTALL_PREFIX)"
store_max=$(sed -nE 's/^FileDescriptorStoreMax=([0-9]+).*/\1/p' "$root$service")
[ -n "$store_max" ] && [ "$store_max" -gt 0 ] || fail "pagerd.service has no FileDescriptorStoreMax="
pagerctl=$(dirname "$exec_start")/pagerctl
if [ "${PAGERD_ASAN:-OFF}" = ON ]; then
  # An AddressSanitizer build: LeakSanitizer's check at exit stops the threads with ptrace,
  # which pagerd.service's SystemCallFilter denies (ptrace is not in @system-service), and
  # then fails the exit. Leak checks belong to the other tests; here the stop must be clean.
  mkdir -p "$root/etc/systemd/system/pagerd.service.d"
  printf '[Service]\nEnvironment=ASAN_OPTIONS=detect_leaks=0\n' \
    > "$root/etc/systemd/system/pagerd.service.d/asan.conf"
  log "ASan build: pagerd.service.d/asan.conf sets ASAN_OPTIONS=detect_leaks=0 (LeakSanitizer needs ptrace)"
fi

install -D -m 0755 "$PAGERD_CLIENT" "$root$in_client"
mkdir -p "$root$in_data"
"$PAGERD_CLIENT" prepare "$root$in_data" > /dev/null || fail "cannot write the client's files"
# Every binary must find its libraries in the tree.
for b in "$exec_start" "$pagerctl" "$in_client"; do
  missing=$(chroot "$root" /usr/bin/ldd "$b" 2>&1 | grep 'not found' || true)
  [ -z "$missing" ] || fail "$b needs libraries the tree lacks (add their packages to \$includes): $missing"
done

# --- 3. boot --------------------------------------------------------------------------------

# A cgroup of this run's own in each hierarchy nspawn uses (systemd's name=systemd and the
# unified one): with --keep-unit nspawn puts the container under its own cgroup, and on a
# host without systemd that would be the root cgroup, shared with any other container.
while IFS=: read -r _ ctl path; do
  case $ctl in
    "") mnt=$(findmnt -n -t cgroup2 -o TARGET | head -n 1) || true ;;
    name=systemd) mnt=$(findmnt -n -t cgroup -o TARGET,OPTIONS \
                          | awk '$2 ~ /(^|,)name=systemd(,|$)/ { print $1; exit }') || true ;;
    *) continue ;;
  esac
  [ -n "$mnt" ] || continue
  d=$mnt${path%/}/$machine
  if mkdir "$d" 2>/dev/null; then cgroups+=("$d"); else log "note: cannot create cgroup $d; nspawn uses its own"; fi
done < /proc/self/cgroup

(
  for d in "${cgroups[@]}"; do
    echo "$BASHPID" > "$d/cgroup.procs" || { echo "run.sh: cannot enter cgroup $d"; exit 97; }
  done
  exec timeout -k 10 300 "$SYSTEMD_NSPAWN" -D "$root" --boot --register=no --keep-unit \
    --private-network --machine="$machine" --console=read-only
) > "$console" 2>&1 < /dev/null &
nspawn_pid=$!
booted=1
log "systemd-nspawn -D $root --boot --register=no --keep-unit --private-network --machine=$machine"

deadline=$((SECONDS + 120))
state=""
while [ $SECONDS -lt $deadline ]; do
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited while booting"
  [ -n "$init_pid" ] || init_pid=$(find_init) || init_pid=""
  if [ -n "$init_pid" ]; then
    state=$(inside 10 systemctl is-system-running 2>/dev/null) || true
    case $state in running | degraded) break ;; esac
  fi
  sleep 0.5
done
case $state in
  running) ;;
  degraded) log "note: the system is degraded:"; inside 20 systemctl --failed --no-pager --plain || true ;;
  *) fail "the container's systemd did not finish booting in 120 s (state '${state}', init PID '${init_pid}')" ;;
esac
log "booted: systemd $(inside 10 systemctl --version | sed -n '1s/^systemd \([^ ]*\).*/\1/p') is PID 1 (host PID $init_pid), system $state"

# --- 4. the socket, socket activation, the restart -------------------------------------------

inside 20 getent passwd pagerd > /dev/null || fail "no user pagerd after boot: sysusers.d ($sysusers) did not run or failed"
inside 10 test -f "$conf" || fail "no $conf after boot: tmpfiles.d ($tmpfiles) did not create it"
out=$(inside 60 systemctl enable --now pagerd.socket 2>&1) || { echo "$out"; fail "systemctl enable --now pagerd.socket failed"; }
[ "$(inside 10 systemctl is-active pagerd.socket)" = active ] || fail "pagerd.socket is not active after enable --now"
[ -L "$root/etc/systemd/system/sockets.target.wants/pagerd.socket" ] \
  || fail "enable did not link pagerd.socket into sockets.target.wants"
sock_mode=$(inside 10 stat -c '%A %U:%G' /run/pagerd/pagerd.sock) || fail "no /run/pagerd/pagerd.sock"
[ "$sock_mode" = "srw-rw---- root:pagerd" ] || fail "/run/pagerd/pagerd.sock is '$sock_mode', not 'srw-rw---- root:pagerd'"
svc_state=$(inside 10 systemctl is-active pagerd.service) || true
[ "$svc_state" = inactive ] || fail "pagerd.service is '$svc_state' before anyone connected; socket activation should start it"
sd_store_max=$(prop pagerd.service FileDescriptorStoreMax) || true
[ "$sd_store_max" = "$store_max" ] \
  || fail "systemctl show: FileDescriptorStoreMax=$sd_store_max, pagerd.service says $store_max"
log "pagerd.socket listening on /run/pagerd/pagerd.sock ($sock_mode); pagerd.service $svc_state; FileDescriptorStoreMax=$sd_store_max"

timeout -k 5 180 "$NSENTER" -t "$init_pid" -a -- env -i PATH=/usr/bin:/bin \
  "$in_client" run "$in_data" "$started_file" "$readdone_file" > "$client_log" 2>&1 &
client_pid=$!
log "client started: maps $in_data/data (64 MiB, read-only) and $in_data/shared (1 MiB, Shared, uffd-wp)"

deadline=$((SECONDS + 60))
until [ -e "/proc/$init_pid/root$started_file" ]; do
  kill -0 "$client_pid" 2>/dev/null || fail "the client exited before it started faulting"
  [ $SECONDS -lt $deadline ] || fail "the client did not start faulting within 60 s"
  sleep 0.05
done
[ "$(inside 10 systemctl is-active pagerd.service)" = active ] \
  || fail "pagerd.service is not active although the client is being served"
main1=$(prop pagerd.service MainPID) || true
restarts0=$(prop pagerd.service NRestarts) || true
[ -n "$main1" ] && [ "$main1" != 0 ] || fail "pagerd.service has no main PID"
[ ! -e "/proc/$init_pid/root$readdone_file" ] || fail "the client finished faulting before the kill"
log "socket activation started pagerd.service (MainPID $main1, NRestarts $restarts0); the client is faulting"

inside 20 systemctl kill -s KILL pagerd.service || fail "systemctl kill -s KILL pagerd.service failed"
log "systemctl kill -s KILL pagerd.service"

wait_restart "$restarts0" "$main1"
client_faulting=yes
[ -e "/proc/$init_pid/root$readdone_file" ] && client_faulting=no
kill -0 "$client_pid" 2>/dev/null || client_faulting=no
[ $client_faulting = yes ] \
  || fail "the client was no longer faulting when the restarted daemon came up: the restart did not land in the middle of its faults"
log "systemd restarted pagerd.service: NRestarts $restarts, MainPID $main1 -> $main2; the client is still faulting"

deadline=$((SECONDS + 120))
while kill -0 "$client_pid" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "the client did not finish within 120 s of the restart"
  sleep 0.2
done
client_rc=0
wait "$client_pid" || client_rc=$?
client_pid=""
sed 's/^/    /' "$client_log"
[ $client_rc = 0 ] || fail "the client exited with $client_rc (see its output above)"
# Some fault waited for the restarted daemon (RestartSec=1s): the kill landed mid-fault.
longest=$(sed -nE 's/.*longest first touch ([0-9]+)\.[0-9] ms.*/\1/p' "$client_log")
[ -n "$longest" ] && [ "$longest" -ge 500 ] \
  || fail "no fault of the client waited through the restart (longest first touch '${longest}' ms, expected >= 500)"
log "the client exited 0: every byte it read was right; its flush succeeded"

# --- 5. what the daemon and systemd say; the file; poweroff ----------------------------------

jr=$(inside 30 journalctl --no-pager -o cat -u pagerd.service) || true
grep -q "Main process exited, code=killed, status=9/KILL" <<< "$jr" \
  || fail "the journal does not show the first daemon killed by SIGKILL"
grep -qE "taken back from the descriptor store with 2 region" <<< "$jr" \
  || fail "the restarted daemon did not log that it took the client (2 regions) back from the descriptor store"
grep -E "descriptor store|Main process exited|Scheduled restart|cannot keep" <<< "$jr" | sed 's/^/    /' || true
if grep -q "cannot keep" <<< "$jr"; then fail "the daemon could not put descriptors in the store"; fi
[ "$(prop pagerd.service NRestarts || true)" = "$restarts" ] || fail "pagerd.service restarted again after the client finished"
# The client is gone: the daemon serves only the pagerctl that asks.
clients=""
for _ in $(seq 50); do
  clients=$(inside 10 "$pagerctl" status --json | sed -nE 's/.*"clients":([0-9]+).*/\1/p') || true
  [ "$clients" = 1 ] && break
  sleep 0.1
done
[ "$clients" = 1 ] || fail "after the client exited, pagerctl status counts $clients clients, not 1 (itself)"
out=$("$PAGERD_CLIENT" check "$root$in_data" 2>&1) \
  || { echo "$out"; fail "$in_data/shared does not hold the client's writes: ${out#client: }"; }
echo "    $out"
log "$in_data/shared holds the writes made before the kill and after the restart"

# The client is gone, and so are its descriptors from the store: after one more SIGKILL the
# next daemon gets the listening socket and nothing else.
inside 20 systemctl kill -s KILL pagerd.service || fail "the second systemctl kill -s KILL failed"
main3_prev=$main2
wait_restart "$restarts" "$main3_prev"
invocation=$(prop pagerd.service InvocationID) || true
for _ in $(seq 100); do
  jr3=$(inside 20 journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID="$invocation") || true
  grep -q "serving on" <<< "$jr3" && break
  sleep 0.1
done
grep -q "serving on" <<< "$jr3" || fail "the daemon restarted after the second kill did not start serving"
if grep -E "taken back|belongs to no client|descriptor passed by systemd" <<< "$jr3"; then
  fail "the exited client's descriptors were still in the descriptor store"
fi
log "second kill: restarted (NRestarts $restarts, MainPID $main3_prev -> $main2) with an empty descriptor store"

inside 30 systemctl --no-block poweroff > /dev/null || true
deadline=$((SECONDS + 60))
while kill -0 "$nspawn_pid" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || fail "the container did not power off within 60 s"
  sleep 0.2
done
nspawn_rc=0
wait "$nspawn_pid" || nspawn_rc=$?
nspawn_pid="" init_pid=""
[ $nspawn_rc = 0 ] || fail "systemd-nspawn exited with $nspawn_rc after poweroff"
# The journal the container left on disk, from the last stop of pagerd.service on: the
# daemon stopped cleanly when the container powered off.
stop=$(journal -o cat 2>/dev/null \
  | awk '/Stopping pagerd.service/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }') || true
sed 's/^/    /' <<< "$stop"
grep -q "Stopping pagerd.service" <<< "$stop" || fail "the journal on disk does not show pagerd.service stopping"
if grep -q "pagerd.service: Failed" <<< "$stop" || ! grep -q "pagerd.service: Deactivated successfully" <<< "$stop"; then
  fail "pagerd.service did not stop cleanly when the container powered off"
fi
log "container powered off"

trap - ERR
cleanup
finished=1
log "done in $((SECONDS - start)) s"
echo "PASS $name"
