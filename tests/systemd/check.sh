#!/usr/bin/env bash
# check.sh STEP: one check of the install tree and the systemd units, run by CTest
# (tests/systemd/CMakeLists.txt sets the environment). `stage` installs the build into
# $PAGERD_STAGE with `cmake --install --prefix`; every other step reads that stage.
# Prints "PASS systemd.STEP" or "FAIL systemd.STEP: why" last; exits non-zero on failure.
set -euo pipefail
step=$1
fail() { echo "FAIL systemd.$step: $*"; exit 1; }
trap 'echo "FAIL systemd.$step: command failed (line $LINENO)"' ERR

stage=$PAGERD_STAGE
for d in "$PAGERD_BINDIR" "$PAGERD_LIBDIR" "$PAGERD_INCLUDEDIR" "$PAGERD_CONFDIR" \
         "$PAGERD_UNITDIR" "$PAGERD_SYSUSERSDIR" "$PAGERD_TMPFILESDIR"; do
  [[ $d != /* ]] || fail "install directory $d is absolute: cmake --install --prefix cannot stage it"
done
bindir=$stage/$PAGERD_BINDIR libdir=$stage/$PAGERD_LIBDIR incdir=$stage/$PAGERD_INCLUDEDIR
confdir=$stage/$PAGERD_CONFDIR unitdir=$stage/$PAGERD_UNITDIR
work=$PAGERD_WORK_DIR/$step
rm -rf "$work" && mkdir -p "$work"

# The staged service, its ExecStart moved from the configured prefix into the stage (verify
# wants the binary to exist). The config path stays: the daemon reads it, systemd does not.
staged_units() {
  sed -E "s|^ExecStart=$PAGERD_INSTALL_PREFIX/|ExecStart=$stage/|" "$unitdir/pagerd.service" \
    > "$work/pagerd.service"
  cp "$unitdir/pagerd.socket" "$work/pagerd.socket"
  grep -q "^ExecStart=$bindir/pagerd " "$work/pagerd.service" \
    || fail "ExecStart does not start $PAGERD_INSTALL_PREFIX/$PAGERD_BINDIR/pagerd"
}

case $step in
stage)
  rm -rf "$stage"
  "$CMAKE" --install "$PAGERD_BUILD_DIR" --prefix "$stage" > "$work/install.log" \
    || { cat "$work/install.log"; fail "cmake --install"; }
  echo "installed into $stage: $(grep -c . "$work/install.log") lines of install log"
  ;;

layout)
  expect=(
    "$bindir/pagerd" "$bindir/pagerctl"
    "$libdir/libpagerd-client.so" "$libdir/libpagerd-client.so.0" "$libdir/libpagerd-client.a"
    "$libdir/pkgconfig/pagerd-client.pc"
    "$incdir/pagerd/client.h" "$incdir/pagerd/client.hpp" "$incdir/pagerd/util/result.hpp"
    "$unitdir/pagerd.service" "$unitdir/pagerd.socket"
    "$stage/$PAGERD_SYSUSERSDIR/pagerd.conf" "$stage/$PAGERD_TMPFILESDIR/pagerd.conf"
    "$confdir/pagerd.conf.sample")
  [ -e "$PAGERD_TEST_SOURCE_DIR/../../libclient/include/umap/umap.h" ] && expect+=("$incdir/umap/umap.h")
  missing=0
  for f in "${expect[@]}"; do
    if [ -e "$f" ]; then echo "ok  ${f#"$stage"/}"; else echo "MISSING ${f#"$stage"/}"; missing=1; fi
  done
  [ -x "$bindir/pagerd" ] && [ -x "$bindir/pagerctl" ] || fail "pagerd or pagerctl not executable"
  [ $missing = 0 ] || fail "files missing from the install"
  "$bindir/pagerd" --version
  ;;

pkg-config)
  export PKG_CONFIG_PATH=$libdir/pkgconfig
  "$PKG_CONFIG" --exists --print-errors pagerd-client || fail "pkg-config does not find pagerd-client"
  flags=$("$PKG_CONFIG" --cflags --libs pagerd-client)
  echo "pkg-config --cflags --libs pagerd-client: $flags"
  # The flags must lead into the stage, not into the configured prefix.
  inc=$("$PKG_CONFIG" --variable=includedir pagerd-client)
  lib=$("$PKG_CONFIG" --variable=libdir pagerd-client)
  [ "$(realpath "$inc")" = "$(realpath "$incdir")" ] || fail "includedir $inc is not $incdir"
  [ "$(realpath "$lib")" = "$(realpath "$libdir")" ] || fail "libdir $lib is not $libdir"
  # shellcheck disable=SC2086
  # (a sanitizer build's library needs the sanitizer runtime in the program too)
  "$CC" -std=c11 -Wall -Wextra -Werror ${PAGERD_SANITIZE_FLAGS:-} "$PAGERD_TEST_SOURCE_DIR/client_connect.c" $flags \
    -o "$work/client_connect"
  # The installed headers stand alone: C for the C headers, C++20 for client.hpp.
  hdrs=(pagerd/client.h)
  [ -e "$incdir/umap/umap.h" ] && hdrs+=(umap/umap.h)
  for h in "${hdrs[@]}"; do
    # shellcheck disable=SC2046
    echo "#include <$h>" | "$CC" -std=c11 -Wall -Werror -fsyntax-only -x c - \
      $("$PKG_CONFIG" --cflags pagerd-client)
  done
  # shellcheck disable=SC2046
  echo "#include <pagerd/client.hpp>" | "$CXX" -std=c++20 -Wall -Werror -fsyntax-only -x c++ - \
    $("$PKG_CONFIG" --cflags pagerd-client)
  out=$(LD_LIBRARY_PATH=$libdir "$work/client_connect" "$work/nobody-listens.sock") \
    || fail "client_connect: $out"
  echo "$out"
  # grep > /dev/null, not grep -q: with pipefail, ldd killed by SIGPIPE would fail the check
  LD_LIBRARY_PATH=$libdir ldd "$work/client_connect" | grep "$libdir/libpagerd-client.so" > /dev/null \
    || fail "client_connect did not load the staged libpagerd-client.so"
  ;;

pkg-config-static)
  # The static library through `pkg-config --static`, from C: it must hold everything it
  # needs from the tree (the protocol codec included); the C++ runtime comes from Libs.private.
  export PKG_CONFIG_PATH=$libdir/pkgconfig
  flags=$("$PKG_CONFIG" --static --cflags --libs pagerd-client)
  flags=${flags/-lpagerd-client/-l:libpagerd-client.a}
  echo "flags: $flags"
  # shellcheck disable=SC2086
  "$CC" -std=c11 -Wall -Wextra -Werror ${PAGERD_SANITIZE_FLAGS:-} "$PAGERD_TEST_SOURCE_DIR/client_connect.c" $flags \
    -o "$work/client_connect" || fail "cannot link against libpagerd-client.a alone"
  if ldd "$work/client_connect" | grep libpagerd-client > /dev/null; then fail "linked the shared library"; fi
  out=$("$work/client_connect" "$work/nobody-listens.sock") || fail "client_connect: $out"
  echo "$out"
  ;;

verify)
  staged_units
  out=$(cd "$work" && "$SYSTEMD_ANALYZE" verify --man=no "$work/pagerd.socket" "$work/pagerd.service" 2>&1) \
    || { echo "$out"; fail "systemd-analyze verify exited non-zero"; }
  [ -z "$out" ] || echo "$out"
  if grep -q pagerd <<< "$out"; then fail "systemd-analyze verify warns about our units"; fi
  echo "systemd-analyze verify: no warnings about pagerd.socket or pagerd.service"
  ;;

security)
  staged_units
  out=$("$SYSTEMD_ANALYZE" security --offline=true --no-pager "$work/pagerd.service" 2>&1) \
    || { echo "$out"; fail "systemd-analyze security exited non-zero"; }
  grep '✗' <<< "$out" || true   # what still counts against the unit
  figure=$(sed -nE 's/.*Overall exposure level for pagerd\.service: ([0-9.]+) .*/\1/p' <<< "$out")
  [ -n "$figure" ] || { echo "$out"; fail "no overall exposure level in the output"; }
  echo "exposure of pagerd.service: $figure (at most $PAGERD_MAX_EXPOSURE allowed)"
  awk -v e="$figure" -v m="$PAGERD_MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' \
    || fail "exposure $figure is over $PAGERD_MAX_EXPOSURE"
  ;;

sysusers)
  root=$work/root && mkdir -p "$root/etc"
  "$SYSTEMD_SYSUSERS" --root="$root" "$stage/$PAGERD_SYSUSERSDIR/pagerd.conf"
  grep -E '^pagerd:x:[0-9]+:[0-9]+:pagerd paging daemon:' "$root/etc/passwd" || fail "no user pagerd"
  grep -E '^pagerd:x:[0-9]+:' "$root/etc/group" || fail "no group pagerd"
  gid=$(awk -F: '$1 == "pagerd" { print $3 }' "$root/etc/group")
  awk -F: -v g="$gid" '$1 == "pagerd" && $4 == g { ok = 1 } END { exit !ok }' "$root/etc/passwd" \
    || fail "user pagerd is not in group pagerd"
  ;;

config)
  # tmpfiles.d creates pagerd.conf from the sample in an image root (paths as configured).
  root=$work/root
  conf=$(awk '$1 == "C" { print $2 }' "$stage/$PAGERD_TMPFILESDIR/pagerd.conf")
  sample=$(awk '$1 == "C" { print $7 }' "$stage/$PAGERD_TMPFILESDIR/pagerd.conf")
  [ "$conf" = "$PAGERD_FULL_CONFDIR/pagerd.conf" ] \
    && [ "$sample" = "$conf.sample" ] || fail "tmpfiles.d line copies '$sample' to '$conf'"
  grep -q -- "--config $conf\$" "$unitdir/pagerd.service" || fail "pagerd.service does not read $conf"
  mkdir -p "$root$(dirname "$sample")" && cp "$confdir/pagerd.conf.sample" "$root$sample"
  "$SYSTEMD_TMPFILES" --root="$root" --create "$stage/$PAGERD_TMPFILESDIR/pagerd.conf"
  cmp "$root$sample" "$root$conf" || fail "tmpfiles.d did not copy the sample to $conf"
  # The sample shows exactly the daemon's options (it ignores unknown keys, so a misspelt
  # one would pass unnoticed), and the daemon accepts it as installed (all defaults) and
  # with every option set to the default the sample shows.
  sed -E 's/^#([a-z-]+ = )/\1/' "$confdir/pagerd.conf.sample" > "$work/all.conf"
  keys=$(sed -nE 's/^([a-z-]+) = .*/\1/p' "$work/all.conf" | sort | tr '\n' ' ')
  opts=$("$bindir/pagerd" --help | grep -oE -- '--[a-z][a-z-]+' | sed 's/^--//' \
    | grep -vxE 'help|version|config' | sort -u | tr '\n' ' ')
  [ "$keys" = "$opts" ] || fail "the sample shows: $keys; the daemon has: $opts"
  for c in "$root$conf" "$work/all.conf"; do
    sock=$work/pagerd.sock log=$work/pagerd.log
    rm -f "$sock"
    env -u LISTEN_FDS -u LISTEN_PID -u NOTIFY_SOCKET -u PAGERD_SOCKET \
      "$bindir/pagerd" --config "$c" --socket "$sock" > "$log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.1; done
    if [ ! -S "$sock" ]; then
      kill $pid 2>/dev/null || true; wait $pid || true; cat "$log"
      fail "pagerd did not start with --config $c"
    fi
    kill -TERM $pid
    rc=0 && wait $pid || rc=$?
    [ $rc = 0 ] || { cat "$log"; fail "pagerd --config $c exited $rc on SIGTERM"; }
    echo "pagerd --config ${c#"$work"/}: started, served $sock, stopped with 0"
  done
  ;;

*) fail "unknown step" ;;
esac
trap - ERR
echo "PASS systemd.$step"
