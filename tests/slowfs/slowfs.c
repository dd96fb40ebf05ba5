/*
 * slowfs: a passthrough FUSE file system whose writes are slow on purpose, for tests.
 *
 *   slowfs BACKING_DIR MOUNTPOINT [--write-delay-ms N] [--gate FILE] [--read-gate FILE]
 *          [--direct-io] [FUSE options]
 *
 * Runs in the foreground, multi-threaded, mounted with allow_other,default_permissions.
 * Every FUSE write request first waits while FILE (--gate) exists, polling every 5 ms,
 * then sleeps N ms (--write-delay-ms), then writes to the file under BACKING_DIR. Nothing
 * else is slowed down: reads, getattr, fsync... go straight to the backing file.
 *
 * The writeback cache is off, so each write(2), pwrite(2) or io_uring write reaches the
 * write handler before it returns: one request per max_write bytes (printed at start-up),
 * never merged across calls. Only dirty pages of a shared writable mmap are written back
 * by the kernel on its own schedule, several pages to a request. Page-cache use for reads
 * stays on unless --direct-io.
 *
 * --read-gate FILE: while FILE exists, read requests of files (not of .slowfs-stats) are
 * held *after* they have read their bytes from the backing file: a held read returns what
 * the file held when the request arrived, however much is written meanwhile (a read whose
 * data came off the disk before a write, delivered late). What is held depends on FILE's
 * contents, read when the request arrives:
 *   (empty)                 every read request;
 *   OFFSET LENGTH           requests whose range meets [OFFSET, OFFSET + LENGTH);
 *   OFFSET LENGTH MAX       the same, but at most MAX held at once (others go through).
 * Held requests go on within ~5 ms of FILE's removal. Write FILE atomically (rename).
 *
 * The synthetic read-only file MOUNTPOINT/.slowfs-stats reads
 *   writes N\nbytes_written N\nblocked N\n
 * and, with --read-gate, two more lines
 *   reads N\nread_blocked N\n
 * writes/bytes_written count write requests completed and their bytes; blocked is the
 * number of write requests waiting at the gate right now; reads counts read requests of
 * files completed, read_blocked those waiting at the read gate now.
 *
 * Gate files should live outside the mount point. SIGTERM, SIGINT and SIGHUP let requests
 * waiting at a gate through, unmount, and exit 0.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define STATS_NAME ".slowfs-stats"
#define STATS_PATH "/" STATS_NAME
#define STATS_FH UINT64_MAX /* fi->fh of an open .slowfs-stats */
#define GATE_POLL_NS (5 * 1000 * 1000L)

static struct {
    const char* backing;
    int backing_fd; /* O_PATH descriptor of BACKING_DIR; every path is relative to it */
    long delay_ms;
    const char* gate;
    const char* read_gate;
    int direct_io;
} g = {.backing_fd = -1};

static _Atomic uint64_t g_writes;
static _Atomic uint64_t g_bytes_written;
static _Atomic unsigned g_blocked;
static _Atomic uint64_t g_reads;
static _Atomic unsigned g_read_blocked;

/* Our own SIGTERM/SIGINT/SIGHUP handler (libfuse leaves a handler it finds in place):
 * libfuse's makes fuse_main return 8 after a signal; ours ends the loop the same way
 * but lets it return 0, and it releases writes waiting at the gate. The handler may run
 * more than once, also while fuse_main tears down (a parent-death signal comes again
 * each time the dead parent's process loses another thread), so destroy clears g_fuse
 * before libfuse frees it. Handlers run on the main thread: libfuse's workers block
 * signals, and the main thread both waits in the loop and calls destroy. Both are
 * lock-free atomics rather than volatile: a volatile sig_atomic_t is safe only between a
 * handler and the thread it interrupts, and other threads use these: writes waiting at
 * the gate read g_stop on libfuse's threads (a data race ThreadSanitizer reported), and
 * init, which sets g_fuse, runs on one of them too. */
static _Atomic(struct fuse*) g_fuse;
static atomic_int g_stop;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&g_stop, 1);
    struct fuse* f = atomic_load(&g_fuse);
    if (f) fuse_exit(f);
}

/* "/a/b" -> "a/b", "/" -> "." */
static const char* rel(const char* path)
{
    while (*path == '/') ++path;
    return *path ? path : ".";
}

static int is_stats(const char* path)
{
    return path && strcmp(path, STATS_PATH) == 0;
}

static int render_stats(char* buf, size_t size)
{
    int n = snprintf(buf, size, "writes %llu\nbytes_written %llu\nblocked %u\n",
                     (unsigned long long)atomic_load(&g_writes),
                     (unsigned long long)atomic_load(&g_bytes_written), atomic_load(&g_blocked));
    if (g.read_gate && n >= 0 && (size_t)n < size)
        n += snprintf(buf + n, size - (size_t)n, "reads %llu\nread_blocked %u\n",
                      (unsigned long long)atomic_load(&g_reads), atomic_load(&g_read_blocked));
    return n;
}

static void stats_attr(struct stat* st)
{
    char buf[256];
    memset(st, 0, sizeof *st);
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_size = render_stats(buf, sizeof buf);
    st->st_blksize = 4096;
    clock_gettime(CLOCK_REALTIME, &st->st_mtim);
    st->st_atim = st->st_ctim = st->st_mtim;
}

static void sleep_ns(long ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000L, .tv_nsec = ns % 1000000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void* sfs_init(struct fuse_conn_info* conn, struct fuse_config* cfg)
{
    /* Write-through: a write returns only after the write handler has run. */
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
    struct fuse* f = fuse_get_context()->fuse;
    atomic_store(&g_fuse, f);
    if (atomic_load(&g_stop)) fuse_exit(f);
    cfg->direct_io = g.direct_io;
    cfg->kernel_cache = 0;
    /* I/O goes through descriptors, so an open file may be unlinked for real; and every
     * operation on an open file or directory works from fi->fh, without a path. */
    cfg->hard_remove = 1;
    cfg->nullpath_ok = 1;
    cfg->negative_timeout = 0;
    fprintf(stderr, "slowfs: %s mounted, write delay %ld ms, gate %s, read gate %s, max_write %u, direct_io %d\n",
            g.backing, g.delay_ms, g.gate ? g.gate : "(none)", g.read_gate ? g.read_gate : "(none)",
            conn->max_write, g.direct_io);
    return NULL;
}

static void sfs_destroy(void* private_data)
{
    (void)private_data;
    atomic_store(&g_fuse, NULL);
}

static int sfs_getattr(const char* path, struct stat* st, struct fuse_file_info* fi)
{
    if (is_stats(path) || (fi && fi->fh == STATS_FH)) {
        stats_attr(st);
        return 0;
    }
    int r = fi ? fstat((int)fi->fh, st) : fstatat(g.backing_fd, rel(path), st, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

static int sfs_readlink(const char* path, char* buf, size_t size)
{
    ssize_t n = readlinkat(g.backing_fd, rel(path), buf, size - 1);
    if (n == -1) return -errno;
    buf[n] = '\0';
    return 0;
}

static int sfs_mkdir(const char* path, mode_t mode)
{
    return mkdirat(g.backing_fd, rel(path), mode) == -1 ? -errno : 0;
}

static int sfs_unlink(const char* path)
{
    if (is_stats(path)) return -EPERM;
    return unlinkat(g.backing_fd, rel(path), 0) == -1 ? -errno : 0;
}

static int sfs_rmdir(const char* path)
{
    return unlinkat(g.backing_fd, rel(path), AT_REMOVEDIR) == -1 ? -errno : 0;
}

static int sfs_symlink(const char* target, const char* path)
{
    if (is_stats(path)) return -EEXIST;
    return symlinkat(target, g.backing_fd, rel(path)) == -1 ? -errno : 0;
}

static int sfs_rename(const char* from, const char* to, unsigned int flags)
{
    if (is_stats(from) || is_stats(to)) return -EPERM;
    return renameat2(g.backing_fd, rel(from), g.backing_fd, rel(to), flags) == -1 ? -errno : 0;
}

static int sfs_chmod(const char* path, mode_t mode, struct fuse_file_info* fi)
{
    if (is_stats(path) || (fi && fi->fh == STATS_FH)) return -EPERM;
    int r = fi ? fchmod((int)fi->fh, mode) : fchmodat(g.backing_fd, rel(path), mode, 0);
    return r == -1 ? -errno : 0;
}

static int sfs_chown(const char* path, uid_t uid, gid_t gid, struct fuse_file_info* fi)
{
    if (is_stats(path) || (fi && fi->fh == STATS_FH)) return -EPERM;
    int r = fi ? fchown((int)fi->fh, uid, gid)
               : fchownat(g.backing_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

static int sfs_truncate(const char* path, off_t size, struct fuse_file_info* fi)
{
    if (is_stats(path) || (fi && fi->fh == STATS_FH)) return -EACCES;
    if (fi) return ftruncate((int)fi->fh, size) == -1 ? -errno : 0;
    int fd = openat(g.backing_fd, rel(path), O_WRONLY | O_CLOEXEC);
    if (fd == -1) return -errno;
    int r = ftruncate(fd, size) == -1 ? -errno : 0;
    close(fd);
    return r;
}

static int sfs_utimens(const char* path, const struct timespec tv[2], struct fuse_file_info* fi)
{
    if (is_stats(path) || (fi && fi->fh == STATS_FH)) return -EPERM;
    int r = fi ? futimens((int)fi->fh, tv)
               : utimensat(g.backing_fd, rel(path), tv, AT_SYMLINK_NOFOLLOW);
    return r == -1 ? -errno : 0;
}

/* The kernel handles O_DIRECT and O_APPEND (it sends the final offset); the backing file
 * gets neither, so that any buffer and offset work and pwrite writes where it is told. */
static int backing_flags(int flags)
{
    return (flags & ~(O_DIRECT | O_APPEND | O_NOCTTY)) | O_CLOEXEC;
}

static int sfs_create(const char* path, mode_t mode, struct fuse_file_info* fi)
{
    if (is_stats(path)) return -EEXIST;
    int fd = openat(g.backing_fd, rel(path), backing_flags(fi->flags) | O_CREAT, mode);
    if (fd == -1) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sfs_open(const char* path, struct fuse_file_info* fi)
{
    if (is_stats(path)) {
        if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) return -EACCES;
        fi->fh = STATS_FH;
        fi->direct_io = 1; /* never cached: each read renders the counters anew */
        return 0;
    }
    int fd = openat(g.backing_fd, rel(path), backing_flags(fi->flags) & ~(O_CREAT | O_EXCL));
    if (fd == -1) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

/* The read gate (--read-gate): 1 if a read of [off, off + size) is to be held now, per the
 * gate file's contents; *max gets its MAX (0: no limit). */
static int read_gate_matches(off_t off, size_t size, unsigned* max)
{
    *max = 0;
    int fd = open(g.read_gate, O_RDONLY | O_CLOEXEC);
    if (fd == -1) return 0; /* no gate file: open */
    char text[128];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 0) return 0;
    text[n] = '\0';
    unsigned long long from = 0, len = 0;
    unsigned limit = 0;
    int fields = sscanf(text, "%llu %llu %u", &from, &len, &limit);
    if (fields < 2) return 1; /* empty (or no range): every read */
    if (fields == 3) *max = limit;
    const unsigned long long a = (unsigned long long)off, b = a + size;
    return a < from + len && from < b;
}

static void hold_read(off_t off, size_t size)
{
    unsigned max = 0;
    if (!g.read_gate || !read_gate_matches(off, size, &max)) return;
    unsigned before = atomic_fetch_add(&g_read_blocked, 1);
    if (max && before >= max) { /* enough held already: this one goes through */
        atomic_fetch_sub(&g_read_blocked, 1);
        return;
    }
    while (!atomic_load(&g_stop) && access(g.read_gate, F_OK) == 0) sleep_ns(GATE_POLL_NS);
    atomic_fetch_sub(&g_read_blocked, 1);
}

static int sfs_read(const char* path, char* buf, size_t size, off_t off, struct fuse_file_info* fi)
{
    (void)path;
    if (fi->fh == STATS_FH) {
        char text[256];
        int len = render_stats(text, sizeof text);
        if (off >= len) return 0;
        size_t n = (size_t)(len - off) < size ? (size_t)(len - off) : size;
        memcpy(buf, text + off, n);
        return (int)n;
    }
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread((int)fi->fh, buf + done, size - done, off + (off_t)done);
        if (n == -1) {
            if (errno == EINTR) continue;
            return done ? (int)done : -errno;
        }
        if (n == 0) break;
        done += (size_t)n;
    }
    /* The bytes are read: a held request returns them as they were now. */
    hold_read(off, size);
    atomic_fetch_add(&g_reads, 1);
    return (int)done;
}

static int sfs_write(const char* path, const char* buf, size_t size, off_t off,
                     struct fuse_file_info* fi)
{
    (void)path;
    if (fi->fh == STATS_FH) return -EBADF;
    if (g.gate && access(g.gate, F_OK) == 0) {
        atomic_fetch_add(&g_blocked, 1);
        /* Released on exit too: libfuse joins its threads before it unmounts. */
        while (!atomic_load(&g_stop) && access(g.gate, F_OK) == 0) sleep_ns(GATE_POLL_NS);
        atomic_fetch_sub(&g_blocked, 1);
    }
    if (g.delay_ms > 0) sleep_ns(g.delay_ms * 1000000L);
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite((int)fi->fh, buf + done, size - done, off + (off_t)done);
        if (n == -1) {
            if (errno == EINTR) continue;
            if (!done) return -errno;
            break;
        }
        done += (size_t)n;
    }
    atomic_fetch_add(&g_writes, 1);
    atomic_fetch_add(&g_bytes_written, (uint64_t)done);
    return (int)done;
}

static int sfs_statfs(const char* path, struct statvfs* st)
{
    (void)path;
    return statvfs(g.backing, st) == -1 ? -errno : 0;
}

static int sfs_flush(const char* path, struct fuse_file_info* fi)
{
    (void)path;
    (void)fi;
    return 0; /* nothing buffered here; data reached the backing file in write */
}

static int sfs_release(const char* path, struct fuse_file_info* fi)
{
    (void)path;
    if (fi->fh != STATS_FH) close((int)fi->fh);
    return 0;
}

static int sfs_fsync(const char* path, int datasync, struct fuse_file_info* fi)
{
    (void)path;
    if (fi->fh == STATS_FH) return 0;
    int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
    return r == -1 ? -errno : 0;
}

/* An open directory. With nullpath_ok, readdir gets no path: it is all in here. */
struct dir_handle {
    DIR* dir;
    int root;
};

static int sfs_opendir(const char* path, struct fuse_file_info* fi)
{
    if (!path) return -ENOENT;
    struct dir_handle* h = calloc(1, sizeof *h);
    if (!h) return -ENOMEM;
    int fd = openat(g.backing_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1 || !(h->dir = fdopendir(fd))) {
        int e = errno;
        if (fd != -1) close(fd);
        free(h);
        return -e;
    }
    h->root = strcmp(rel(path), ".") == 0;
    fi->fh = (uint64_t)(uintptr_t)h;
    return 0;
}

static int sfs_releasedir(const char* path, struct fuse_file_info* fi)
{
    (void)path;
    struct dir_handle* h = (struct dir_handle*)(uintptr_t)fi->fh;
    closedir(h->dir);
    free(h);
    return 0;
}

/* All entries in one go (offset 0 to the filler); libfuse buffers them for the kernel. */
static int sfs_readdir(const char* path, void* buf, fuse_fill_dir_t fill, off_t off,
                       struct fuse_file_info* fi, enum fuse_readdir_flags flags)
{
    (void)path;
    (void)off;
    (void)flags;
    struct dir_handle* h = (struct dir_handle*)(uintptr_t)fi->fh;
    rewinddir(h->dir);
    struct dirent* e;
    while ((e = readdir(h->dir)) != NULL) {
        if (h->root && strcmp(e->d_name, STATS_NAME) == 0) continue;
        struct stat st;
        memset(&st, 0, sizeof st);
        st.st_ino = e->d_ino;
        st.st_mode = (mode_t)DTTOIF(e->d_type);
        if (fill(buf, e->d_name, &st, 0, 0)) return 0;
    }
    if (h->root) {
        struct stat st;
        stats_attr(&st);
        fill(buf, STATS_NAME, &st, 0, 0);
    }
    return 0;
}

static int sfs_fallocate(const char* path, int mode, off_t off, off_t len, struct fuse_file_info* fi)
{
    (void)path;
    if (fi->fh == STATS_FH) return -EBADF;
    return fallocate((int)fi->fh, mode, off, len) == -1 ? -errno : 0;
}

static const struct fuse_operations sfs_ops = {
    .init = sfs_init,
    .destroy = sfs_destroy,
    .getattr = sfs_getattr,
    .readlink = sfs_readlink,
    .mkdir = sfs_mkdir,
    .unlink = sfs_unlink,
    .rmdir = sfs_rmdir,
    .symlink = sfs_symlink,
    .rename = sfs_rename,
    .chmod = sfs_chmod,
    .chown = sfs_chown,
    .truncate = sfs_truncate,
    .utimens = sfs_utimens,
    .create = sfs_create,
    .open = sfs_open,
    .read = sfs_read,
    .write = sfs_write,
    .statfs = sfs_statfs,
    .flush = sfs_flush,
    .release = sfs_release,
    .fsync = sfs_fsync,
    .opendir = sfs_opendir,
    .readdir = sfs_readdir,
    .releasedir = sfs_releasedir,
    .fallocate = sfs_fallocate,
};

static void usage(FILE* out)
{
    fprintf(out,
            "usage: slowfs BACKING_DIR MOUNTPOINT [--write-delay-ms N] [--gate FILE] [--read-gate FILE]\n"
            "              [--direct-io] [FUSE options, e.g. -d]\n"
            "  --write-delay-ms N  every write request sleeps N ms before it writes (default 0)\n"
            "  --gate FILE         while FILE exists, every write request waits (polled every 5 ms)\n"
            "  --read-gate FILE    while FILE exists, read requests wait after reading their bytes:\n"
            "                      all of them (FILE empty), or those meeting OFFSET LENGTH, at most\n"
            "                      MAX at once (FILE: OFFSET LENGTH [MAX])\n"
            "  --direct-io         open files with direct_io (default: page cache, write-through)\n"
            "MOUNTPOINT/" STATS_NAME " reads: writes N, bytes_written N, blocked N (one per line);\n"
            "with --read-gate also reads N, read_blocked N.\n");
}

int main(int argc, char* argv[])
{
    const char* positional[2] = {NULL, NULL};
    int npositional = 0;
    /* argv[0], -f, -o opts, extra FUSE options..., mountpoint */
    char** fargv = calloc((size_t)argc + 5, sizeof *fargv);
    if (!fargv) return 1;
    int fargc = 0;
    fargv[fargc++] = argv[0];
    fargv[fargc++] = "-f";
    fargv[fargc++] = "-o";
    /* Up to 64 requests at once, e.g. writes held at the gate while reads go on; with
     * max_idle_threads set, libfuse 3.14 does not warn about its own default. */
    fargv[fargc++] = "allow_other,default_permissions,fsname=slowfs,subtype=slowfs,"
                     "max_threads=64,max_idle_threads=64";

    for (int i = 1; i < argc; ++i) {
        const char* a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            free(fargv);
            return 0;
        } else if (strcmp(a, "--write-delay-ms") == 0 && i + 1 < argc) {
            char* end = NULL;
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (errno || !end || *end || v < 0 || v > 3600L * 1000) {
                fprintf(stderr, "slowfs: bad --write-delay-ms: %s\n", argv[i]);
                free(fargv);
                return 2;
            }
            g.delay_ms = v;
        } else if (strcmp(a, "--gate") == 0 && i + 1 < argc) {
            g.gate = argv[++i];
        } else if (strcmp(a, "--read-gate") == 0 && i + 1 < argc) {
            g.read_gate = argv[++i];
        } else if (strcmp(a, "--direct-io") == 0) {
            g.direct_io = 1;
        } else if (a[0] == '-') {
            fargv[fargc++] = argv[i]; /* a FUSE option; -o takes the next word with it */
            if ((strcmp(a, "-o") == 0) && i + 1 < argc) fargv[fargc++] = argv[++i];
        } else if (npositional < 2) {
            positional[npositional++] = a;
        } else {
            usage(stderr);
            free(fargv);
            return 2;
        }
    }
    if (npositional != 2) {
        usage(stderr);
        free(fargv);
        return 2;
    }
    g.backing = positional[0];
    g.backing_fd = open(g.backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (g.backing_fd == -1) {
        fprintf(stderr, "slowfs: %s: %s\n", g.backing, strerror(errno));
        free(fargv);
        return 1;
    }
    fargv[fargc++] = (char*)positional[1];
    fargv[fargc] = NULL;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) == -1 || sigaction(SIGINT, &sa, NULL) == -1 ||
        sigaction(SIGHUP, &sa, NULL) == -1) {
        perror("slowfs: sigaction");
        free(fargv);
        return 1;
    }

    int r = fuse_main(fargc, fargv, &sfs_ops, NULL);
    close(g.backing_fd);
    free(fargv);
    return r;
}
