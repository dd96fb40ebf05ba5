/* A plain C program written for LLNL UMap, built unchanged against pagerd's <umap/umap.h>.
 *
 *   umap_example FILE          sums FILE's bytes through a read-write region, prints
 *                              "sum <n>", overwrites every byte i with (i * 7 + 3) & 0xff,
 *                              umap_flush()es and uunmap()s.
 *   umap_example -r FILE       sums only, through a PROT_READ region.
 *
 * Exit status 0 on success; on failure a message on stderr and a non-zero status. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <umap/umap.h>
#include <unistd.h>

static int fail(const char* what, int code)
{
    fprintf(stderr, "umap_example: %s: %s (%s)\n", what, strerror(errno), pagerd_umap_last_error());
    return code;
}

int main(int argc, char** argv)
{
    int read_only = 0;
    const char* path = NULL;
    if (argc == 3 && strcmp(argv[1], "-r") == 0) {
        read_only = 1;
        path = argv[2];
    } else if (argc == 2) {
        path = argv[1];
    } else {
        fprintf(stderr, "usage: umap_example [-r] FILE\n");
        return 2;
    }

    const int fd = open(path, read_only ? O_RDONLY : O_RDWR);
    if (fd < 0) return fail("open", 3);
    struct stat st;
    if (fstat(fd, &st) != 0) return fail("fstat", 4);
    const uint64_t size = (uint64_t)st.st_size;

    /* As UMap programs do: a region that is a whole number of UMap pages. */
    const uint64_t psize = umapcfg_get_umap_page_size();
    const uint64_t region_size = (size + psize - 1) / psize * psize;
    if (psize == 0 || umapcfg_get_max_pages_in_buffer() == 0) return fail("umapcfg", 5);
    if (!read_only && !umap_has_write_support()) return fail("write support", 6);

    const int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
    unsigned char* base = (unsigned char*)umap(NULL, region_size, prot, UMAP_PRIVATE, fd, 0);
    if (base == UMAP_FAILED) return fail("umap", 7);

    /* Load the first pages ahead of use. */
    struct umap_prefetch_item items[4];
    for (int i = 0; i < 4; ++i) items[i].page_base_addr = base + (uint64_t)i * psize % region_size;
    umap_prefetch(4, items);

    uint64_t sum = 0;
    for (uint64_t i = 0; i < size; ++i) sum += base[i];
    printf("sum %llu\n", (unsigned long long)sum);

    if (!read_only) {
        for (uint64_t i = 0; i < size; ++i) base[i] = (unsigned char)((i * 7 + 3) & 0xff);
        if (umap_flush() != 0) return fail("umap_flush", 8);
    }
    if (uunmap(base, region_size) != 0) return fail("uunmap", 9);
    if (uunmap(base, region_size) == 0 || errno != EINVAL) return fail("second uunmap", 10);
    close(fd);
    return 0;
}
