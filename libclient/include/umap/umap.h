/* UMap-compatible C API over pagerd (docs/umap.md).
 *
 * Source-compatible with LLNL UMap's <umap/umap.h> for the calls a UMap application
 * makes: umap(), uunmap(), umap_flush(), umap_prefetch() and the umapcfg_get_*()
 * getters. Pages are served by the pagerd daemon; the connection to it is made on the
 * first call that needs it (socket from $PAGERD_SOCKET, else /run/pagerd/pagerd.sock).
 *
 * Unlike UMap, nothing here aborts, exits or throws: failures return UMAP_FAILED or -1
 * with errno set, and pagerd_umap_last_error() says why in words.
 * Every function may be called from any number of threads at once.
 * Link with -lpagerd-client. Valid C (C99 and later) and C++. */
#ifndef PAGERD_UMAP_H
#define PAGERD_UMAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

/* flags */
#define UMAP_PRIVATE MAP_PRIVATE /* required, as in UMap */
#define UMAP_FIXED MAP_FIXED     /* map exactly at addr, replacing what is there */

/* return code of umap() (as MAP_FAILED) */
#ifdef __cplusplus
#define UMAP_FAILED (reinterpret_cast<void*>(-1))
#else
#define UMAP_FAILED ((void*)-1)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Maps [offset, offset + length) of the regular file open on fd; its pages load from the
 * file on first touch.
 *   prot   PROT_READ: read-only memory; writes raise SIGSEGV.
 *          PROT_READ | PROT_WRITE: writes go back to the file on umap_flush() and
 *          uunmap() (fd must then be open for writing).
 *   flags  UMAP_PRIVATE, optionally | UMAP_FIXED (then addr, page-aligned, is where the
 *          region goes; otherwise addr is ignored).
 *   length rounded up to a whole page; the region must lie within the file rounded up
 *          to a whole page.
 *   offset a multiple of the page size.
 * fd stays the caller's: it may be closed after umap() returns.
 * Returns the region's address, or UMAP_FAILED with errno set: EINVAL (bad prot, flags,
 * offset, addr, length, or a range past the end of the file), EBADF (fd not open, or
 * not open for writing when prot has PROT_WRITE), ENOMEM (a daemon limit), ECONNREFUSED
 * (no daemon), EIO (the daemon failed), or the errno of the call that failed. */
void* umap(void* addr, size_t length, int prot, int flags, int fd, off_t offset);

/* Unmaps the region that umap() returned at addr (length is not used, as in UMap),
 * after writing its dirty pages to the file. Returns 0, or -1 with errno set (EINVAL:
 * addr is not the start of a region made by umap()). */
int uunmap(void* addr, size_t length);

/* Writes the dirty pages of every writable region to their files and waits until they
 * are there (fdatasync): a read() of the file sees them afterwards. Returns 0, or -1
 * with errno set. */
int umap_flush(void);

/* 1: PROT_READ | PROT_WRITE regions write back to their files. */
int umap_has_write_support(void);

/* Asks the daemon to load the pages that hold the given addresses (each must lie in a
 * region made by umap()) in the background, as UMap's fillers do; returns once queued. */
struct umap_prefetch_item {
    void* page_base_addr;
};
void umap_prefetch(int npages, struct umap_prefetch_item* page_array);

/* Configuration, read once from the environment as UMap does ($UMAP_PAGESIZE, ...; an
 * unset, zero or unparsable variable means the default). docs/umap.md says which of
 * these change what pagerd does and which are reported for compatibility only. */
long umapcfg_get_system_page_size(void);
uint64_t umapcfg_get_umap_page_size(void);
uint64_t umapcfg_get_max_pages_in_buffer(void);
uint64_t umapcfg_get_num_fillers(void);
uint64_t umapcfg_get_num_evictors(void);
uint64_t umapcfg_get_read_ahead(void);
uint64_t umapcfg_get_max_fault_events(void);
int umapcfg_get_evict_low_water_threshold(void);
int umapcfg_get_evict_high_water_threshold(void);

/* pagerd extension: the reason for the calling thread's last failure of a umap call
 * above, or "" if none failed. The text stays valid until this thread's next call. */
const char* pagerd_umap_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* PAGERD_UMAP_H */
