/* A plain C program on the C API, linked against the shared libpagerd-client: maps
 * argv[2] through the daemon at argv[1], writes its bytes to stdout, checks error paths,
 * maps a zero store. */
#include <errno.h>
#include <fcntl.h>
#include <pagerd/client.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* argv[3], if given: a file to write "C API" into at offset 4096 through a Shared region. */
static int write_through(pagerd_conn* conn, const char* path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return 30;
    pagerd_region r;
    if (pagerd_map_fd_tracked(conn, fd, 0, 8192, PAGERD_SHARED, PAGERD_TRACK_SIGSEGV, &r) != 0) {
        fprintf(stderr, "map shared: %s\n", pagerd_last_error());
        return 31;
    }
    close(fd);
    memcpy((char*)r.addr + 4096, "C API", 5);
    uint64_t pages = 0, bytes = 0;
    if (pagerd_flush(conn, &r, &pages, &bytes) != 0 || pages != 1 || bytes != 4096) return 32;
    if (pagerd_flush_all(conn, &pages, NULL) != 0 || pages != 0) return 33;
    return pagerd_unmap(conn, &r) == 0 ? 0 : 34;
}

/* A store by URI: zero memory reads zeros and takes private writes; a NULL URI is refused. */
static int zero_store(pagerd_conn* conn)
{
    static const char zeros[65536];
    pagerd_region z;
    if (pagerd_map_store(conn, NULL, 0, sizeof zeros, PAGERD_READ_ONLY, PAGERD_TRACK_AUTO,
                         PAGERD_PREFETCH_NONE, &z) == 0 ||
        pagerd_last_error_code() != EINVAL)
        return 40;
    if (pagerd_map_store(conn, "zero:64K", 0, sizeof zeros, PAGERD_PRIVATE_WRITABLE, PAGERD_TRACK_AUTO,
                         PAGERD_PREFETCH_NONE, &z) != 0) {
        fprintf(stderr, "map store: %s\n", pagerd_last_error());
        return 41;
    }
    if (z.size != sizeof zeros || memcmp(z.addr, zeros, sizeof zeros) != 0) return 42;
    memcpy(z.addr, "C API", 5);
    if (memcmp(z.addr, "C API", 5) != 0) return 43;
    return pagerd_unmap(conn, &z) == 0 ? 0 : 44;
}

int main(int argc, char** argv)
{
    if (argc != 3 && argc != 4) return 2;
    pagerd_conn* conn = NULL;
    if (pagerd_connect(argv[1], &conn) != 0) {
        fprintf(stderr, "connect: %s\n", pagerd_last_error());
        return 3;
    }
    if (pagerd_ping(conn) != 0) return 4;
    struct stat st;
    if (stat(argv[2], &st) != 0) return 5;
    const uint64_t len = ((uint64_t)st.st_size + 4095) / 4096 * 4096;
    pagerd_region r;
    /* Error paths: zero length, unaligned offset, NULL arguments. */
    if (pagerd_map_path(conn, argv[2], 0, 0, PAGERD_READ_ONLY, &r) == 0) return 6;
    if (strstr(pagerd_last_error(), "zero") == NULL) return 7;
    if (pagerd_map_path(conn, argv[2], 100, 4096, PAGERD_READ_ONLY, &r) == 0) return 8;
    if (pagerd_map_path(NULL, argv[2], 0, 4096, PAGERD_READ_ONLY, &r) == 0) return 9;
    if (pagerd_map_path(conn, argv[2], 0, len, 42, &r) == 0) return 10;
    if (pagerd_map_path(conn, argv[2], 0, len, PAGERD_READ_ONLY, &r) != 0) {
        fprintf(stderr, "map: %s\n", pagerd_last_error());
        return 11;
    }
    if (r.size != len || r.addr == NULL) return 12;
    if (fwrite(r.addr, 1, (size_t)st.st_size, stdout) != (size_t)st.st_size) return 13;
    pagerd_status s;
    if (pagerd_status_get(conn, &s) != 0 || s.regions < 1 || s.faults < 1) return 14;
    if (pagerd_user_mode_only(conn) != 0 || s.this_client_user_mode_only != 0) return 15;
    if (pagerd_unmap(conn, &r) != 0) return 16;
    if (pagerd_unmap(conn, &r) == 0) return 17; /* twice: refused */
    {
        const int rc = zero_store(conn);
        if (rc) return rc;
    }
    if (argc == 4) {
        const int rc = write_through(conn, argv[3]);
        if (rc) return rc;
    }
    return pagerd_disconnect(conn) == 0 ? 0 : 18;
}
