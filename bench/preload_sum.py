# pagerd-bench --cases preload: numpy.memmap summing an array of uint64 (wrapping), run by
# python3 with and without pagerd-run. Prints one line of key=value figures:
#   preload_sum.py single FILE     seconds: np.memmap + sum in this process
#   preload_sum.py pool FILE N     seconds: a multiprocessing pool of N workers made with the
#                                  fork start method after the memmap, each summing 1/N of it,
#                                  from making the pool to the last part summed
# rss, pss: bytes (/proc/PID/smaps_rollup) of this process plus, for pool, of every worker,
# read by this process once all parts are summed (the workers still alive, idle).
# also_rss, also_pss: the same of the processes listed in $PRELOAD_SUM_ALSO (comma-separated
# pids: pagerd-bench names the daemon), read at the same moment.
import multiprocessing
import os
import sys
import time

import numpy as np

a = None
barrier = None


def memory(pid):
    rss = pss = 0
    with open("/proc/%s/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def also():
    rss = pss = 0
    for p in filter(None, os.environ.get("PRELOAD_SUM_ALSO", "").split(",")):
        r, s = memory(p)
        rss += r
        pss += s
    return rss, pss


def part(i, n):
    barrier.wait()  # every part in a worker of its own
    lo, hi = len(a) * i // n, len(a) * (i + 1) // n
    return os.getpid(), int(a[lo:hi].sum(dtype=np.uint64))


def main():
    global a, barrier
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "single":
        t0 = time.perf_counter()
        a = np.memmap(path, dtype=np.uint64, mode="r")
        total = int(a.sum(dtype=np.uint64))
        seconds = time.perf_counter() - t0
        rss, pss = memory("self")
        ar, ap = also()
        print("sum=%d seconds=%.6f rss=%d pss=%d workers=0 also_rss=%d also_pss=%d" % (total, seconds, rss, pss, ar, ap))
        return
    n = int(sys.argv[3])
    a = np.memmap(path, dtype=np.uint64, mode="r")
    barrier = multiprocessing.get_context("fork").Barrier(n, timeout=120)
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(n) as pool:
        results = pool.starmap(part, [(i, n) for i in range(n)], chunksize=1)
        seconds = time.perf_counter() - t0
        pids = sorted({p for p, _ in results})
        rss, pss = memory("self")
        for p in pids:
            r, s = memory(p)
            rss += r
            pss += s
        ar, ap = also()
    total = sum(s for _, s in results) % 2**64
    print("sum=%d seconds=%.6f rss=%d pss=%d workers=%d also_rss=%d also_pss=%d" % (total, seconds, rss, pss, len(pids), ar, ap))


if __name__ == "__main__":
    main()
