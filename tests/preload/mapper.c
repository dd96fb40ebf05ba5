/* mapper: an ordinary program (libc's mmap, no libclient) that the preload tests run with
 * and without pagerd-run. Its arguments are steps, done in order; each prints one line,
 * the same with and without pagerd (errors as errno names):
 *   open:PATH:ro|rw|wo                   the descriptor later steps map
 *   map:S:OFF:LEN|all:r|rw|rx|none:shared|private|validate[:populate|fixed]
 *                                        mapping slot S (0-9); fixed: at slot S's address
 *   anon:S:LEN                           anonymous memory in slot S
 *   anonfixed:S                          anonymous memory (bytes 1) over slot S (MAP_FIXED)
 *   sum:S[:OFF:LEN]                      sum of the bytes
 *   write:S:OFF:TEXT   peek:S:OFF:N      store into / print (hex) the mapping
 *   pwrite:OFF:TEXT                      write(2) through the descriptor
 *   msync:S[:async]   willneed:S   munmap:S:OFF:LEN
 *   mremap:S:LEN:none|maymove|fixed      fixed: to a fresh address
 *   threads:N:ROUNDS:PATH                N threads each map, sum and unmap PATH ROUNDS times
 *   halves:ROUNDS:PATH                   ROUNDS times: map PATH, unmap its first half, sum
 *                                        and unmap the second
 *   wait                                 prints "wait", reads a line from stdin
 *   exec:PATH                            execv(PATH) with no arguments (after a fork: the child)
 *   fork                                 the child does the steps after it; the parent
 *                                        waits for it, prints "child exit N" and stops
 *   parent                               after a fork: the child stops here (exit 0), the
 *                                        parent goes on from here once it has waited
 * libmapper-ctor.so (linked in) maps $MAPPER_CTOR_FILE from its constructor, before main. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern int mapper_ctor_ran;
extern unsigned long long mapper_ctor_sum;

struct slot {
    unsigned char* p;
    size_t len;
};
static struct slot slots[10];
static int fd = -1;

static const char* err_name(int e)
{
    const char* n = strerrorname_np(e);
    return n ? n : "E?";
}

static unsigned long long sum_bytes(const unsigned char* p, size_t len)
{
    unsigned long long s = 0;
    for (size_t i = 0; i < len; ++i) s += p[i];
    return s;
}

static char* field(char** rest)
{
    char* f = *rest;
    if (!f) return "";
    char* colon = strchr(f, ':');
    if (colon) {
        *colon = '\0';
        *rest = colon + 1;
    } else {
        *rest = NULL;
    }
    return f;
}

static unsigned long long num(const char* s) { return strtoull(s, NULL, 0); }

struct job {
    const char* path;
    int rounds;
    unsigned long long first;
    int bad;
};

static void* worker(void* arg)
{
    struct job* j = arg;
    for (int r = 0; r < j->rounds; ++r) {
        int f = open(j->path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (f < 0 || fstat(f, &st) != 0) {
            j->bad = 1;
            return NULL;
        }
        unsigned char* p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, f, 0);
        close(f);
        if (p == MAP_FAILED) {
            j->bad = 1;
            return NULL;
        }
        const unsigned long long s = sum_bytes(p, (size_t)st.st_size);
        if (r == 0) j->first = s;
        else if (s != j->first) j->bad = 1;
        if (munmap(p, (size_t)st.st_size) != 0) j->bad = 1;
    }
    return NULL;
}

static void threads(int n, int rounds, const char* path)
{
    pthread_t t[64];
    struct job jobs[64] = {{0}};
    if (n > 64) n = 64;
    if (n < 1) n = 1;
    for (int i = 0; i < n; ++i) {
        jobs[i] = (struct job){path, rounds, 0, 0};
        pthread_create(&t[i], NULL, worker, &jobs[i]);
    }
    int bad = 0;
    for (int i = 0; i < n; ++i) {
        pthread_join(t[i], NULL);
        bad |= jobs[i].bad || jobs[i].first != jobs[0].first;
    }
    printf("threads %s %llu\n", bad ? "mismatch" : "ok", jobs[0].first);
}

static void halves(int rounds, const char* path)
{
    int f = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (f < 0 || fstat(f, &st) != 0) {
        printf("halves: %s\n", err_name(errno));
        return;
    }
    const size_t half = (size_t)st.st_size / 2 & ~(size_t)4095;
    unsigned long long first = 0;
    int bad = 0;
    for (int r = 0; r < rounds; ++r) {
        unsigned char* p = mmap(NULL, 2 * half, PROT_READ, MAP_PRIVATE, f, 0);
        if (p == MAP_FAILED || munmap(p, half) != 0) {
            bad = 1;
            break;
        }
        const unsigned long long s = sum_bytes(p + half, half);
        if (r == 0) first = s;
        bad |= s != first || munmap(p + half, half) != 0;
    }
    close(f);
    printf("halves %s %llu\n", bad ? "mismatch" : "ok", first);
}

static int prot_of(const char* s)
{
    if (!strcmp(s, "rw")) return PROT_READ | PROT_WRITE;
    if (!strcmp(s, "rx")) return PROT_READ | PROT_EXEC;
    if (!strcmp(s, "none")) return PROT_NONE;
    return PROT_READ;
}

static int type_of(const char* s)
{
    if (!strcmp(s, "shared")) return MAP_SHARED;
    if (!strcmp(s, "validate")) return MAP_SHARED_VALIDATE;
    return MAP_PRIVATE;
}

static void map_step(char* rest)
{
    const int s = (int)num(field(&rest));
    const off_t off = (off_t)num(field(&rest));
    const char* len_s = field(&rest);
    const int prot = prot_of(field(&rest));
    int flags = type_of(field(&rest));
    const char* extra = field(&rest);
    struct stat st;
    fstat(fd, &st);
    size_t len = !strcmp(len_s, "all") ? (size_t)(st.st_size - off) : (size_t)num(len_s);
    void* at = NULL;
    if (!strcmp(extra, "populate")) flags |= MAP_POPULATE;
    if (!strcmp(extra, "fixed")) {
        flags |= MAP_FIXED;
        at = slots[s].p;
    }
    void* p = mmap(at, len, prot, flags, fd, off);
    if (p == MAP_FAILED) {
        printf("map %d: %s\n", s, err_name(errno));
        return;
    }
    slots[s].p = p;
    slots[s].len = len;
    printf("map %d: ok\n", s);
}

static void step(char* arg)
{
    char* rest = arg;
    const char* op = field(&rest);
    if (!strcmp(op, "open")) {
        const char* path = field(&rest);
        const char* mode = field(&rest);
        fd = open(path, !strcmp(mode, "rw") ? O_RDWR : !strcmp(mode, "wo") ? O_WRONLY : O_RDONLY);
        printf("open: %s\n", fd < 0 ? err_name(errno) : "ok");
    } else if (!strcmp(op, "map")) {
        map_step(rest);
    } else if (!strcmp(op, "anon")) {
        const int s = (int)num(field(&rest));
        slots[s].len = num(field(&rest));
        slots[s].p = mmap(NULL, slots[s].len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memset(slots[s].p, 1, slots[s].len);
        printf("anon %d: ok\n", s);
    } else if (!strcmp(op, "anonfixed")) {
        const int s = (int)num(field(&rest));
        void* p = mmap(slots[s].p, slots[s].len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) {
            printf("anonfixed %d: %s\n", s, err_name(errno));
            return;
        }
        memset(p, 1, slots[s].len);
        printf("anonfixed %d: ok\n", s);
    } else if (!strcmp(op, "sum")) {
        const int s = (int)num(field(&rest));
        size_t off = 0, len = slots[s].len;
        if (rest) {
            off = num(field(&rest));
            len = num(field(&rest));
        }
        printf("sum %d %llu\n", s, sum_bytes(slots[s].p + off, len));
    } else if (!strcmp(op, "write")) {
        const int s = (int)num(field(&rest));
        const size_t off = num(field(&rest));
        const char* text = field(&rest);
        memcpy(slots[s].p + off, text, strlen(text));
        printf("write %d: ok\n", s);
    } else if (!strcmp(op, "peek")) {
        const int s = (int)num(field(&rest));
        const size_t off = num(field(&rest)), n = num(field(&rest));
        printf("peek %d %zu:", s, off);
        for (size_t i = 0; i < n; ++i) printf(" %02x", slots[s].p[off + i]);
        printf("\n");
    } else if (!strcmp(op, "pwrite")) {
        const off_t off = (off_t)num(field(&rest));
        const char* text = field(&rest);
        const ssize_t w = pwrite(fd, text, strlen(text), off);
        printf("pwrite: %s\n", w < 0 ? err_name(errno) : "ok");
    } else if (!strcmp(op, "msync")) {
        const int s = (int)num(field(&rest));
        const int r = msync(slots[s].p, slots[s].len, !strcmp(field(&rest), "async") ? MS_ASYNC : MS_SYNC);
        printf("msync %d: %s\n", s, r ? err_name(errno) : "ok");
    } else if (!strcmp(op, "willneed")) {
        const int s = (int)num(field(&rest));
        const int r = madvise(slots[s].p, slots[s].len, MADV_WILLNEED);
        printf("willneed %d: %s\n", s, r ? err_name(errno) : "ok");
    } else if (!strcmp(op, "munmap")) {
        const int s = (int)num(field(&rest));
        const size_t off = num(field(&rest)), len = num(field(&rest));
        const int r = munmap(slots[s].p + off, len);
        printf("munmap %d: %s\n", s, r ? err_name(errno) : "ok");
    } else if (!strcmp(op, "mremap")) {
        const int s = (int)num(field(&rest));
        const size_t len = num(field(&rest));
        const char* how = field(&rest);
        void* p;
        if (!strcmp(how, "fixed")) {
            void* to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            p = mremap(slots[s].p, slots[s].len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to);
        } else {
            p = mremap(slots[s].p, slots[s].len, len, !strcmp(how, "maymove") ? MREMAP_MAYMOVE : 0);
        }
        if (p == MAP_FAILED) {
            printf("mremap %d: %s\n", s, err_name(errno));
            return;
        }
        slots[s].p = p;
        slots[s].len = len;
        printf("mremap %d: ok\n", s);
    } else if (!strcmp(op, "threads")) {
        const int n = (int)num(field(&rest));
        const int rounds = (int)num(field(&rest));
        threads(n, rounds, field(&rest));
    } else if (!strcmp(op, "halves")) {
        const int rounds = (int)num(field(&rest));
        halves(rounds, field(&rest));
    } else if (!strcmp(op, "exec")) {
        char* path = field(&rest);
        char* argv[] = {path, NULL};
        execv(path, argv);
        printf("exec: %s\n", err_name(errno));
        exit(1);
    } else if (!strcmp(op, "wait")) {
        char line[64];
        printf("wait\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) exit(3);
    } else {
        printf("unknown step %s\n", op);
        exit(2);
    }
}

int main(int argc, char** argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (mapper_ctor_ran) printf("ctor sum %llu\n", mapper_ctor_sum);
    int forked = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "fork") == 0) {
            const pid_t child = fork();
            if (child < 0) {
                printf("fork: %s\n", err_name(errno));
                return 1;
            }
            if (child == 0) {
                forked = 1;
                continue;
            }
            int status = 0;
            waitpid(child, &status, 0);
            printf("child exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
            while (i < argc && strcmp(argv[i], "parent") != 0) ++i;  /* the parent's steps, if any */
            continue;
        }
        if (strcmp(argv[i], "parent") == 0) {
            if (forked) return 0;
            continue;
        }
        step(argv[i]);
    }
    return 0;
}
