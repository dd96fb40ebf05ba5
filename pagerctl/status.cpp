#include "commands.hpp"

#include <cstdio>
#include <iostream>

namespace pagerd::pagerctl {

int run_status(const std::string& socket, bool json)
{
    auto conn = libclient::Connection::connect({socket, "pagerctl"});
    if (!conn) return report(conn.error());
    auto s = conn.value()->status();
    if (!s) return report(s.error());
    auto regions = conn.value()->regions();
    if (!regions) return report(regions.error());
    auto access_name = [](libclient::Access a) {
        return a == libclient::Access::Shared ? "shared" : a == libclient::Access::PrivateWritable ? "private" : "read-only";
    };
    if (json) {
        std::printf("{\"version\":\"%s\",\"uptime_ms\":%llu,\"workers\":%u,\"clients\":%u,"
                    "\"regions\":%llu,\"mapped_bytes\":%llu,\"faults\":%llu,\"pages_installed\":%llu,"
                    "\"bytes_read\":%llu,\"sigbus_faults\":%llu,\"latency_ns\":{\"p50\":%llu,\"p99\":%llu,"
                    "\"max\":%llu},\"user_mode_only_clients\":%u,\"region_list\":[",
                    s->version.c_str(), (unsigned long long)s->uptime_ms, s->workers, s->clients,
                    (unsigned long long)s->regions, (unsigned long long)s->mapped_bytes,
                    (unsigned long long)s->faults, (unsigned long long)s->pages_installed,
                    (unsigned long long)s->bytes_read, (unsigned long long)s->sigbus_faults,
                    (unsigned long long)s->latency_p50_ns, (unsigned long long)s->latency_p99_ns,
                    (unsigned long long)s->latency_max_ns, s->user_mode_only_clients);
        for (std::size_t i = 0; i < regions->size(); ++i) {
            const auto& r = (*regions)[i];
            std::printf("%s{\"client\":%llu,\"pid\":%u,\"id\":%llu,\"length\":%llu,\"access\":\"%s\","
                        "\"tracking\":\"%s\",\"dirty_pages\":%llu}",
                        i ? "," : "", (unsigned long long)r.client, r.pid, (unsigned long long)r.id,
                        (unsigned long long)r.length, access_name(r.access),
                        r.access == libclient::Access::Shared ? libclient::tracking_name(r.tracking) : "none",
                        (unsigned long long)r.dirty_pages);
        }
        std::printf("]}\n");
        return 0;
    }
    std::printf("%s\n", s->version.c_str());
    std::printf("uptime            %.1f s\n", s->uptime_ms / 1000.0);
    std::printf("workers           %u\n", s->workers);
    std::printf("clients           %u, this pagerctl included (user-mode-only userfaultfd: %u)\n", s->clients,
                s->user_mode_only_clients);
    std::printf("regions           %llu (%llu bytes)\n", (unsigned long long)s->regions,
                (unsigned long long)s->mapped_bytes);
    std::printf("faults served     %llu (%llu pages installed, %llu answered with SIGBUS)\n",
                (unsigned long long)s->faults, (unsigned long long)s->pages_installed,
                (unsigned long long)s->sigbus_faults);
    std::printf("bytes read        %llu\n", (unsigned long long)s->bytes_read);
    std::printf("fault latency     p50 %.1f us, p99 %.1f us, max %.1f us\n", s->latency_p50_ns / 1e3,
                s->latency_p99_ns / 1e3, s->latency_max_ns / 1e3);
    if (!regions->empty()) std::printf("\n%-8s %-8s %-6s %14s  %-9s %-9s %s\n", "client", "pid", "region", "bytes", "access", "tracking", "dirty pages");
    for (const auto& r : *regions)
        std::printf("%-8llu %-8u %-6llu %14llu  %-9s %-9s %llu\n", (unsigned long long)r.client, r.pid,
                    (unsigned long long)r.id, (unsigned long long)r.length, access_name(r.access),
                    r.access == libclient::Access::Shared ? libclient::tracking_name(r.tracking) : "-",
                    (unsigned long long)r.dirty_pages);
    return 0;
}

}  // namespace pagerd::pagerctl
