/* fork_after_map: a program written without pagerd in mind that forks after mapping a file,
 * run by test_programs under pagerd-run (and without it, for the expected output).
 *
 *   fork_after_map read FILE [SYNCDIR]
 *       mmap(PROT_READ, MAP_PRIVATE) of the whole file; sums the first half (64-bit little-endian
 *       words, wrapping); forks 3 children that each sum all of it (so the pages the parent never
 *       touched load in the children) and print it; with SYNCDIR, once they ended, creates
 *       SYNCDIR/children and waits for SYNCDIR/go; then the parent sums all of it.
 *       Prints "half S", "child I S" (in the order they end), "all S".
 *   fork_after_map write FILE
 *       open O_RDWR, mmap(PROT_READ|PROT_WRITE, MAP_SHARED); the parent reads the first quarter;
 *       one child writes byte k(p) = (p * 7 + 1) & 0xff at offset p * 4096 + 100 of every 8th page p
 *       (loaded and unloaded ones) and exits; the parent checks that its own mapping shows them,
 *       msync(MS_SYNC) of the whole mapping, munmap. Prints "written N", "seen N".
 *   fork_after_map spawn FILE SYNCDIR
 *       mmap(PROT_READ, MAP_PRIVATE), sums the first half, creates SYNCDIR/mapped and waits for
 *       SYNCDIR/go1; posix_spawn of /bin/true, fork + execve of itself in mode "nothing"; waits for
 *       both; creates SYNCDIR/spawned and waits for SYNCDIR/go2; sums all of it.
 *       Prints "half S", "true 0", "nothing 0", "all S".
 *   fork_after_map nothing
 *       maps nothing, exits 0.
 * Exit status 0 when every step worked (a child that fails makes the parent exit 2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

static void die(const char* what)
{
    fprintf(stderr, "fork_after_map: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t sum_words(const unsigned char* p, size_t bytes)
{
    uint64_t s = 0;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        s += w;
    }
    return s;
}

static const unsigned char* map_file(const char* path, int writable, size_t* size, int* fd_out)
{
    const int fd = open(path, writable ? O_RDWR : O_RDONLY);
    if (fd < 0) die(path);
    struct stat st;
    if (fstat(fd, &st) != 0) die("fstat");
    *size = (size_t)st.st_size;
    void* p = mmap(NULL, *size, writable ? PROT_READ | PROT_WRITE : PROT_READ, writable ? MAP_SHARED : MAP_PRIVATE, fd,
                   0);
    if (p == MAP_FAILED) die("mmap");
    if (fd_out)
        *fd_out = fd;
    else
        close(fd);
    return (const unsigned char*)p;
}

static int wait_ok(pid_t pid)
{
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    fprintf(stderr, "fork_after_map: child %d killed by signal %d\n", (int)pid, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static void touch_file(const char* dir, const char* name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die(path);
    close(fd);
}

static void wait_for_file(const char* dir, const char* name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    for (int i = 0; i < 6000; ++i) { /* 60 s */
        if (access(path, F_OK) == 0) return;
        const struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "fork_after_map: %s did not appear\n", path);
    exit(1);
}

static void touch_file(const char* dir, const char* name);
static void wait_for_file(const char* dir, const char* name);

static int mode_read(const char* path, const char* dir)
{
    size_t size = 0;
    const unsigned char* p = map_file(path, 0, &size, NULL);
    printf("half %llu\n", (unsigned long long)sum_words(p, size / 2));
    fflush(stdout);
    pid_t kids[3];
    for (int i = 0; i < 3; ++i) {
        kids[i] = fork();
        if (kids[i] < 0) die("fork");
        if (kids[i] == 0) {
            printf("child %d %llu\n", i, (unsigned long long)sum_words(p, size));
            fflush(stdout);
            _exit(0);
        }
    }
    int bad = 0;
    for (int i = 0; i < 3; ++i) bad |= wait_ok(kids[i]) != 0;
    if (dir) {
        touch_file(dir, "children");
        wait_for_file(dir, "go");
    }
    printf("all %llu\n", (unsigned long long)sum_words(p, size));
    munmap((void*)p, size);
    return bad ? 2 : 0;
}

static int mode_write(const char* path)
{
    size_t size = 0;
    int fd = -1;
    unsigned char* p = (unsigned char*)map_file(path, 1, &size, &fd);
    const size_t pages = size / 4096;
    /* The parent loads the first quarter; the child writes into loaded and unloaded pages. */
    volatile uint64_t s = sum_words(p, size / 4);
    (void)s;
    fflush(stdout);
    const pid_t kid = fork();
    if (kid < 0) die("fork");
    if (kid == 0) {
        size_t n = 0;
        for (size_t pg = 0; pg < pages; pg += 8, ++n) p[pg * 4096 + 100] = (unsigned char)((pg * 7 + 1) & 0xff);
        printf("written %zu\n", n);
        fflush(stdout);
        _exit(0);
    }
    const int bad = wait_ok(kid) != 0;
    size_t seen = 0;
    for (size_t pg = 0; pg < pages; pg += 8) seen += p[pg * 4096 + 100] == (unsigned char)((pg * 7 + 1) & 0xff);
    printf("seen %zu\n", seen);
    if (msync(p, size, MS_SYNC) != 0) die("msync");
    if (munmap(p, size) != 0) die("munmap");
    close(fd);
    return bad ? 2 : 0;
}

static int mode_spawn(const char* self, const char* path, const char* dir)
{
    size_t size = 0;
    const unsigned char* p = map_file(path, 0, &size, NULL);
    printf("half %llu\n", (unsigned long long)sum_words(p, size / 2));
    fflush(stdout);
    touch_file(dir, "mapped");
    wait_for_file(dir, "go1");

    pid_t t = -1;
    char* true_argv[] = {(char*)"/bin/true", NULL};
    const int e = posix_spawn(&t, "/bin/true", NULL, NULL, true_argv, environ);
    if (e != 0) {
        errno = e;
        die("posix_spawn /bin/true");
    }
    const pid_t kid = fork();
    if (kid < 0) die("fork");
    if (kid == 0) {
        char* args[] = {(char*)self, (char*)"nothing", NULL};
        execve(self, args, environ);
        _exit(127);
    }
    const int true_status = wait_ok(t);
    const int nothing_status = wait_ok(kid);
    printf("true %d\nnothing %d\n", true_status, nothing_status);
    fflush(stdout);
    touch_file(dir, "spawned");
    wait_for_file(dir, "go2");
    printf("all %llu\n", (unsigned long long)sum_words(p, size));
    munmap((void*)p, size);
    return true_status == 0 && nothing_status == 0 ? 0 : 2;
}

int main(int argc, char** argv)
{
    if (argc >= 2 && strcmp(argv[1], "nothing") == 0) return 0;
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "read") == 0) return mode_read(argv[2], argc == 4 ? argv[3] : NULL);
    if (argc == 3 && strcmp(argv[1], "write") == 0) return mode_write(argv[2]);
    if (argc == 4 && strcmp(argv[1], "spawn") == 0) {
        char self[4096];
        const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) die("readlink /proc/self/exe");
        self[n] = '\0';
        return mode_spawn(self, argv[2], argv[3]);
    }
    fprintf(stderr, "usage: fork_after_map read FILE [SYNCDIR] | write FILE | spawn FILE SYNCDIR | nothing\n");
    return 64;
}
