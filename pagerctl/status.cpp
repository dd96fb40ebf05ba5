// pagerctl status: the daemon's counters, its fault-latency histogram, every region of
// every client, the page caches and the stores.
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "commands.hpp"
#include "pagerd/proto/constants.hpp"

namespace pagerd::pagerctl {
namespace {

using ull = unsigned long long;

// A time in µs as a short label: "512µs", "1.0ms", "32.8ms".
std::string short_us(std::uint64_t us)
{
    char buf[32];
    if (us < 1000) std::snprintf(buf, sizeof buf, "%lluµs", (ull)us);
    else std::snprintf(buf, sizeof buf, "%.1fms", us / 1000.0);
    return buf;
}

// Bucket i of a latency histogram: "<2µs", "2-4µs", ..., "512µs-1.0ms", ..., ">=32.8ms".
std::string latency_bucket_label(std::size_t i)
{
    constexpr std::size_t last = libclient::k_latency_buckets - 1;
    if (i == 0) return "<2µs";
    if (i >= last) return ">=" + short_us(std::uint64_t{1} << last);
    const std::uint64_t lo = std::uint64_t{1} << i, hi = lo << 1;
    if (hi < 1000) return std::to_string(lo) + "-" + short_us(hi);
    if (lo < 1000) return short_us(lo) + "-" + short_us(hi);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f-%.1fms", lo / 1000.0, hi / 1000.0);
    return buf;
}

// Display columns of a UTF-8 string (µ is two bytes and one column).
std::size_t columns(const std::string& s)
{
    std::size_t n = 0;
    for (const unsigned char c : s)
        if ((c & 0xc0) != 0x80) ++n;
    return n;
}

std::string pad_right(std::string s, std::size_t width)
{
    const std::size_t n = columns(s);
    if (n < width) s.append(width - n, ' ');
    return s;
}

std::string pad_left(const std::string& s, std::size_t width)
{
    const std::size_t n = columns(s);
    return n < width ? std::string(width - n, ' ') + s : s;
}

// "1.5 MiB"; below 1 KiB the exact count of bytes ("0", "512 B").
std::string human_bytes(std::uint64_t n)
{
    if (n == 0) return "0";
    if (n < 1024) return std::to_string(n) + " B";
    static const char* const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = static_cast<double>(n) / 1024;
    std::size_t u = 0;
    while (v >= 1024 && u + 1 < std::size(units)) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

const char* access_name(libclient::Access a)
{
    return a == libclient::Access::Shared ? "shared" : a == libclient::Access::PrivateWritable ? "private" : "read-only";
}

template <class Histogram>
std::string json_array(const Histogram& h)
{
    std::string out = "[";
    for (std::size_t i = 0; i < h.size(); ++i) out += (i ? "," : "") + std::to_string(h[i]);
    return out + "]";
}

std::string json_string(const std::string& s)
{
    std::string out = "\"";
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

// The non-empty buckets of a region's histogram as "label:count" pairs, "-" if none.
std::string compact_histogram(const libclient::LatencyHistogram& h)
{
    std::string out;
    for (std::size_t i = 0; i < h.size(); ++i)
        if (h[i]) out += (out.empty() ? "" : " ") + latency_bucket_label(i) + ":" + std::to_string(h[i]);
    return out.empty() ? "-" : out;
}

void print_histogram(const libclient::LatencyHistogram& h)
{
    constexpr std::size_t bar_width = 40;
    std::uint64_t max = 0, total = 0;
    for (const auto n : h) {
        max = n > max ? n : max;
        total += n;
    }
    if (total == 0) {
        std::printf("fault latency histogram: no faults timed yet\n");
        return;
    }
    std::printf("fault latency histogram (%llu faults)\n", (ull)total);
    for (std::size_t i = 0; i < h.size(); ++i) {
        if (!h[i]) continue;
        // Scaled to the largest bucket, and at least one '#' for a non-empty one.
        const auto bar = static_cast<std::size_t>((h[i] * bar_width + max - 1) / max);
        std::printf("  %s %12llu  %s\n", pad_right(latency_bucket_label(i), 12).c_str(), (ull)h[i],
                    std::string(bar, '#').c_str());
    }
}

}  // namespace

int run_status(const std::string& socket, bool json)
{
    auto conn = libclient::Connection::connect({socket, "pagerctl"});
    if (!conn) return report(conn.error());
    auto s = conn.value()->status();
    if (!s) return report(s.error());
    auto regions = conn.value()->regions();
    if (!regions) return report(regions.error());
    auto caches = conn.value()->caches();
    if (!caches) return report(caches.error());
    // A daemon without capability STORES lists none (it would not know the request).
    Result<std::vector<libclient::StoreInfo>> stores = std::vector<libclient::StoreInfo>{};
    if (conn.value()->daemon_caps() & proto::cap::STORES) stores = conn.value()->stores();
    if (!stores) return report(stores.error());
    if (json) {
        std::printf("{\"version\":%s,\"uptime_ms\":%llu,\"workers\":%u,\"clients\":%u,"
                    "\"regions\":%llu,\"mapped_bytes\":%llu,\"faults\":%llu,\"pages_installed\":%llu,"
                    "\"bytes_read\":%llu,\"sigbus_faults\":%llu,\"latency_ns\":{\"p50\":%llu,\"p99\":%llu,"
                    "\"max\":%llu},\"user_mode_only_clients\":%u,\"pages_prefetched\":%llu,"
                    "\"cache\":{\"budget\":%llu,\"bytes\":%llu,\"files\":%llu,\"loads\":%llu,\"hits\":%llu,"
                    "\"evictions\":%llu,\"refaults\":%llu,\"dirty_bytes\":%llu,\"writebacks\":%llu},"
                    "\"latency_histogram\":%s,\"region_list\":[",
                    json_string(s->version).c_str(), (ull)s->uptime_ms, s->workers, s->clients,
                    (ull)s->regions, (ull)s->mapped_bytes, (ull)s->faults, (ull)s->pages_installed,
                    (ull)s->bytes_read, (ull)s->sigbus_faults, (ull)s->latency_p50_ns,
                    (ull)s->latency_p99_ns, (ull)s->latency_max_ns, s->user_mode_only_clients,
                    (ull)s->pages_prefetched, (ull)s->cache_budget, (ull)s->cache_bytes, (ull)s->cache_files,
                    (ull)s->cache_loads, (ull)s->cache_hits, (ull)s->cache_evictions, (ull)s->cache_refaults,
                    (ull)s->cache_dirty_bytes, (ull)s->cache_writebacks, json_array(s->latency_histogram).c_str());
        for (std::size_t i = 0; i < regions->size(); ++i) {
            const auto& r = (*regions)[i];
            std::printf("%s{\"client\":%llu,\"pid\":%u,\"id\":%llu,\"length\":%llu,\"access\":\"%s\","
                        "\"tracking\":\"%s\",\"dirty_pages\":%llu,\"prefetch\":\"%s\",\"faults\":%llu,"
                        "\"latency_p50_ns\":%llu,\"latency_p99_ns\":%llu,\"prefetch_pending\":%llu,"
                        "\"latency_histogram\":%s}",
                        i ? "," : "", (ull)r.client, r.pid, (ull)r.id, (ull)r.length, access_name(r.access),
                        r.access == libclient::Access::Shared ? libclient::tracking_name(r.tracking) : "none",
                        (ull)r.dirty_pages, libclient::prefetch_name(r.prefetch), (ull)r.faults,
                        (ull)r.latency_p50_ns, (ull)r.latency_p99_ns, (ull)r.prefetch_pending,
                        json_array(r.latency_histogram).c_str());
        }
        std::printf("],\"cache_list\":[");
        for (std::size_t i = 0; i < caches->size(); ++i) {
            const auto& k = (*caches)[i];
            std::printf("%s{\"dev\":%llu,\"ino\":%llu,\"size\":%llu,\"dirty\":%llu,\"resident\":%llu,"
                        "\"clients\":%u,\"regions\":%u}",
                        i ? "," : "", (ull)k.dev, (ull)k.ino, (ull)k.size, (ull)k.dirty, (ull)k.resident, k.clients,
                        k.regions);
        }
        std::printf("],\"stores\":[");
        for (std::size_t i = 0; i < stores->size(); ++i) {
            const auto& t = (*stores)[i];
            std::printf("%s{\"kind\":%s,\"uri\":%s,\"size\":%llu,\"connections\":%u,\"inflight\":%u,"
                        "\"reads\":%llu,\"read_bytes\":%llu,\"read_errors\":%llu,\"retries\":%llu,"
                        "\"timeouts\":%llu,\"reconnects\":%llu,\"writes\":%llu,\"write_bytes\":%llu,"
                        "\"write_errors\":%llu,\"read_latency_avg_ns\":%llu,\"read_latency_max_ns\":%llu}",
                        i ? "," : "", json_string(t.kind).c_str(), json_string(t.uri).c_str(), (ull)t.size,
                        t.connections, t.inflight, (ull)t.reads, (ull)t.read_bytes, (ull)t.read_errors,
                        (ull)t.retries, (ull)t.timeouts, (ull)t.reconnects, (ull)t.writes, (ull)t.write_bytes,
                        (ull)t.write_errors, (ull)t.read_latency_avg_ns, (ull)t.read_latency_max_ns);
        }
        std::printf("]}\n");
        return 0;
    }
    std::printf("%s\n", s->version.c_str());
    std::printf("uptime            %.1f s\n", s->uptime_ms / 1000.0);
    std::printf("workers           %u\n", s->workers);
    std::printf("clients           %u, this pagerctl included (user-mode-only userfaultfd: %u)\n", s->clients,
                s->user_mode_only_clients);
    std::printf("regions           %llu (%llu bytes)\n", (ull)s->regions, (ull)s->mapped_bytes);
    std::printf("faults served     %llu (%llu pages installed, %llu answered with SIGBUS)\n", (ull)s->faults,
                (ull)s->pages_installed, (ull)s->sigbus_faults);
    std::printf("pages prefetched  %llu\n", (ull)s->pages_prefetched);
    std::printf("bytes read        %llu\n", (ull)s->bytes_read);
    std::printf("page cache        %llu of %llu bytes, %llu file(s), %llu bytes dirty; pages: %llu loaded, %llu hits, "
                "%llu evicted, %llu refaults, %llu written back\n",
                (ull)s->cache_bytes, (ull)s->cache_budget, (ull)s->cache_files, (ull)s->cache_dirty_bytes,
                (ull)s->cache_loads, (ull)s->cache_hits, (ull)s->cache_evictions, (ull)s->cache_refaults,
                (ull)s->cache_writebacks);
    std::printf("fault latency     p50 %.1f us, p99 %.1f us, max %.1f us\n", s->latency_p50_ns / 1e3,
                s->latency_p99_ns / 1e3, s->latency_max_ns / 1e3);
    std::printf("\n");
    print_histogram(s->latency_histogram);
    if (!regions->empty())
        std::printf("\n%-8s %-8s %-6s %14s  %-9s %-9s %-10s %11s %10s %9s %9s %10s  %s\n", "client", "pid", "region",
                    "bytes", "access", "tracking", "prefetch", "dirty pages", "faults", "p50 us", "p99 us", "pending",
                    "latency histogram");
    for (const auto& r : *regions)
        std::printf("%-8llu %-8u %-6llu %14llu  %-9s %-9s %-10s %11llu %10llu %9.1f %9.1f %s  %s\n", (ull)r.client,
                    r.pid, (ull)r.id, (ull)r.length, access_name(r.access),
                    r.access == libclient::Access::Shared ? libclient::tracking_name(r.tracking) : "-",
                    libclient::prefetch_name(r.prefetch), (ull)r.dirty_pages, (ull)r.faults,
                    r.latency_p50_ns / 1e3, r.latency_p99_ns / 1e3,
                    pad_left(human_bytes(r.prefetch_pending), 10).c_str(),
                    compact_histogram(r.latency_histogram).c_str());
    if (!caches->empty())
        std::printf("\n%-12s %-12s %14s %14s %14s %8s %8s\n", "cache dev", "inode", "file bytes", "resident", "dirty",
                    "clients", "regions");
    for (const auto& k : *caches)
        std::printf("%-12llu %-12llu %14llu %14llu %14llu %8u %8u\n", (ull)k.dev, (ull)k.ino, (ull)k.size,
                    (ull)k.resident, (ull)k.dirty, k.clients, k.regions);
    // Stores: "errors" counts failed reads and writes, "writes" the writes with their bytes.
    if (!stores->empty())
        std::printf("\n%-10s %14s %5s %9s %10s %14s %7s %8s %8s %10s %10s %14s %11s %11s  %s\n", "store kind",
                    "bytes", "conns", "in flight", "reads", "bytes read", "errors", "retries", "timeouts",
                    "reconnects", "writes", "bytes written", "avg read us", "max read us", "uri");
    for (const auto& t : *stores)
        std::printf("%-10s %14llu %5u %9u %10llu %14llu %7llu %8llu %8llu %10llu %10llu %14llu %11.1f %11.1f  %s\n",
                    t.kind.c_str(), (ull)t.size, t.connections, t.inflight, (ull)t.reads, (ull)t.read_bytes,
                    (ull)(t.read_errors + t.write_errors), (ull)t.retries, (ull)t.timeouts, (ull)t.reconnects,
                    (ull)t.writes, (ull)t.write_bytes, t.read_latency_avg_ns / 1e3, t.read_latency_max_ns / 1e3,
                    t.uri.c_str());
    return 0;
}

}  // namespace pagerd::pagerctl
