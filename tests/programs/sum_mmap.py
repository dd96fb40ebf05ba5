# Sums a file through Python's mmap module: 64-bit little-endian words (wrapping) and its
# SHA-256. Run by test_programs with and without pagerd-run; prints "SUM SHA256".
import hashlib
import mmap
import sys

with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    words = memoryview(m).cast("Q")
    total = sum(words) % 2**64
    words.release()
    digest = hashlib.sha256(m).hexdigest()
    m.close()
print(total, digest)
