# Sums a file of uint64 through numpy.memmap (wrapping), in this process or in a
# multiprocessing pool made with the fork start method after the memmap: each of N workers
# sums one part of the parent's mapping. Run by test_programs with and without pagerd-run.
#   sum_memmap.py FILE            prints "SUM"
#   sum_memmap.py FILE N          the parent sums the first eighth first (loaded before the
#                                 fork), then the pool (a barrier puts every part in a worker
#                                 of its own); prints "SUM PARTS PIDS" (PARTS summed,
#                                 PIDS: distinct worker processes that summed them)
import multiprocessing
import os
import sys

import numpy as np

a = np.memmap(sys.argv[1], dtype=np.uint64, mode="r")
barrier = None


def part(i, n):
    barrier.wait()  # every part in a worker of its own
    lo, hi = len(a) * i // n, len(a) * (i + 1) // n
    return os.getpid(), int(a[lo:hi].sum(dtype=np.uint64))


def main():
    global barrier
    if len(sys.argv) == 2:
        print(int(a.sum(dtype=np.uint64)))
        return
    n = int(sys.argv[2])
    first = int(a[: len(a) // 8].sum(dtype=np.uint64))
    barrier = multiprocessing.get_context("fork").Barrier(n, timeout=60)
    with multiprocessing.get_context("fork").Pool(n) as pool:
        results = pool.starmap(part, [(i, n) for i in range(n)], chunksize=1)
    total = sum(s for _, s in results) % 2**64
    assert first != 0
    print(total, len(results), len({p for p, _ in results}))


if __name__ == "__main__":
    main()
