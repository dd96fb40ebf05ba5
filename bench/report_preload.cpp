// Output of the preload cases (--cases preload): their tables, and their JSON member.
#include <cstdio>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

std::string cell(double v, const char* unit = "") { return v >= 0 ? fmt(v) + unit : "-"; }

std::string gib(std::uint64_t bytes) { return fmt(static_cast<double>(bytes) / (1ull << 30)); }

double gbs(double seconds, std::uint64_t bytes) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : -1; }

std::string status_cell(const PreloadCase& c)
{
    if (!c.skipped.empty()) return "skipped";
    if (!c.failure.empty()) return "FAILED";
    return "ok";
}

}  // namespace

void print_preload_tables(const RunInfo& info)
{
    if (!info.preload) return;
    const PreloadRun& run = info.preload_run;
    const std::uint64_t bytes = info.file_bytes;
    std::printf("\nPreload cases: python3 + numpy.memmap summing the %s GiB array, without and with pagerd-run\n"
                "(ratio = kernel mmap time / pagerd-run time: above 1, pagerd-run is faster; GB/s = 10^9 bytes/s)\n\n",
                gib(bytes).c_str());
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> notes;
    for (const auto& c : run.cases) {
        // A side that ran is shown even when the case failed (the ratio only when both count).
        const bool k = c.kernel.ran(), p = c.pagerd.ran();
        rows.push_back({c.num, c.name, k ? fmt(c.kernel.seconds) : "-", p ? fmt(c.pagerd.seconds) : "-",
                        c.ran() ? fmt(c.ratio()) + "x" : "-", k ? cell(gbs(c.kernel.seconds, bytes)) : "-",
                        p ? cell(gbs(c.pagerd.seconds, bytes)) : "-", k ? fmt(c.kernel.wall) : "-",
                        p ? fmt(c.pagerd.wall) : "-", status_cell(c)});
        if (!c.failure.empty()) notes.push_back(c.num + " FAILED: " + c.failure);
        if (!c.skipped.empty()) notes.push_back(c.num + " skipped: " + c.skipped);
        for (const auto& n : c.notes) notes.push_back(c.num + " " + n);
    }
    print_rows({"#", "case", "kernel s", "pagerd-run s", "ratio", "kernel GB/s", "pagerd GB/s", "kernel wall s",
                "pagerd wall s", ""},
               rows, 2);
    for (const auto& c : run.cases) std::printf("%-3s %s\n", c.num.c_str(), c.title.c_str());
    std::printf("s: the script's own clock (single: np.memmap + sum; pool: from making the pool to the last part);\n"
                "wall: fork to exit of python3 (with pagerd-run: of pagerd-run and python3), import of numpy included.\n");

    // Memory of the pool cases.
    rows.clear();
    auto ratio = [](std::uint64_t a, std::uint64_t b) {
        return b ? fmt(static_cast<double>(a) / static_cast<double>(b)) + "x" : std::string("-");
    };
    for (const auto& c : run.cases) {
        if (!c.pool || !c.ran()) continue;
        rows.push_back({c.num, c.name, gib(c.kernel.rss), gib(c.kernel.pss), gib(c.pagerd.rss), gib(c.pagerd.pss),
                        gib(c.pagerd.daemon_pss), gib(c.pagerd.cache_peak), gib(c.kernel_memory()),
                        gib(c.pagerd_memory()), ratio(c.pagerd_memory(), c.kernel_memory()),
                        gib(c.pagerd_memory_cache()), ratio(c.pagerd_memory_cache(), c.kernel_memory())});
    }
    if (!rows.empty()) {
        std::printf("\n");
        print_rows({"#", "case", "kernel RSS", "kernel PSS", "pagerd RSS", "pagerd PSS", "daemon PSS", "daemon cache",
                    "kernel total", "pagerd total", "ratio", "PSS + cache", "ratio"},
                   rows, 2);
        std::printf("GiB. RSS, PSS: /proc/PID/smaps_rollup of the parent and of every worker, summed, read by the parent\n"
                    "once every part is summed; daemon PSS: the daemon's, read at the same moment. daemon cache: the\n"
                    "peak of its cache_bytes (sampled every 10 ms). total: PSS of every process (Python's, + the\n"
                    "daemon's: the cache pages the workers map are shared with it and counted once). PSS + cache:\n"
                    "Python's PSS + the cache peak (those pages counted twice: an upper bound). ratio: pagerd /\n"
                    "kernel, lower is better. The kernel's page cache of the file is in no total (the file when hot).\n");
    }

    // The pagerd side as the daemon saw it.
    rows.clear();
    for (const auto& c : run.cases) {
        if (!c.ran()) continue;
        const auto u = [](std::uint64_t v) { return std::to_string(v); };
        rows.push_back({c.num, c.name, c.pagerd.taken ? "yes" : "no", u(c.pagerd.faults), u(c.pagerd.cache_loads),
                        u(c.pagerd.cache_hits), gib(c.pagerd.bytes_read), gib(c.pagerd.cache_peak),
                        cell(c.pagerd.daemon_cpu), cell(c.kernel.cpu), cell(c.pagerd.cpu)});
    }
    if (!rows.empty()) {
        std::printf("\n");
        print_rows({"#", "case", "taken", "faults", "cache loads", "cache hits", "GiB read", "cache peak GiB",
                    "daemon CPU s", "python CPU s (kernel)", "python CPU s (pagerd)"},
                   rows, 2);
        std::printf("taken: the preload library's debug line about the file (pagerd-run --debug). faults, cache loads\n"
                    "and hits (pages), GiB read: the fresh daemon's status over the measured run (hot: after a first\n"
                    "run with the same daemon). python CPU: utime+stime of python3 and its workers (wait4).\n");
    }
    std::printf("\narray:      %s\n", run.array_file.c_str());
    std::printf("python:     %s, numpy %s, script %s\n", run.python.c_str(), run.numpy.empty() ? "?" : run.numpy.c_str(),
                run.script.c_str());
    std::printf("pagerd-run: %s --socket SOCKET --debug -- python3 SCRIPT single|pool FILE [%u]\n",
                run.pagerd_run.empty() ? "(not found)" : run.pagerd_run.c_str(), run.workers);
    for (const auto& d : run.daemons) std::printf("daemon %s\n", d.c_str());
    std::printf("the group took %.0f s; load average at its start %s\n", run.seconds, run.load.c_str());
    for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
}

void print_preload_json(const RunInfo& info)
{
    if (!info.preload) return;
    const PreloadRun& run = info.preload_run;
    auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
    auto side = [&](const PreloadSide& s, bool pagerd) {
        std::printf("{\"seconds\":%s,\"wall_seconds\":%s,\"sum\":%llu,\"rss\":%llu,\"pss\":%llu,\"workers\":%u,"
                    "\"cpu_seconds\":%s",
                    json_number(s.seconds).c_str(), json_number(s.wall).c_str(), u(s.sum), u(s.rss), u(s.pss), s.workers,
                    json_number(s.cpu).c_str());
        if (pagerd) std::printf(",\"daemon_rss\":%llu,\"daemon_pss\":%llu", u(s.daemon_rss), u(s.daemon_pss));
        if (pagerd)
            std::printf(",\"taken\":%s,\"debug\":%s,\"faults\":%llu,\"cache_loads\":%llu,\"cache_hits\":%llu,"
                        "\"bytes_read\":%llu,\"cache_peak\":%llu,\"daemon_cpu_seconds\":%s",
                        s.taken ? "true" : "false", json_string(s.debug).c_str(), u(s.faults), u(s.cache_loads),
                        u(s.cache_hits), u(s.bytes_read), u(s.cache_peak), json_number(s.daemon_cpu).c_str());
        std::printf("}");
    };
    std::printf(",\"preload\":{\"seconds\":%s,\"load_average\":%s,\"array_file\":%s,\"pagerd_run\":%s,\"python\":%s,"
                "\"numpy\":%s,\"script\":%s,\"workers\":%u,\"cases\":[",
                json_number(run.seconds).c_str(), json_string(run.load).c_str(), json_string(run.array_file).c_str(),
                json_string(run.pagerd_run).c_str(), json_string(run.python).c_str(), json_string(run.numpy).c_str(),
                json_string(run.script).c_str(), run.workers);
    for (std::size_t i = 0; i < run.cases.size(); ++i) {
        const auto& c = run.cases[i];
        std::printf("%s{\"num\":%s,\"name\":%s,\"title\":%s,\"pool\":%s,\"cold\":%s,\"ratio\":%s,\"kernel_memory\":%s,"
                    "\"pagerd_memory\":%s,\"pagerd_memory_with_cache\":%s,\"failure\":%s,\"skipped\":%s,\"kernel\":",
                    i ? "," : "", json_string(c.num).c_str(), json_string(c.name).c_str(), json_string(c.title).c_str(),
                    c.pool ? "true" : "false", c.cold ? "true" : "false", json_number(c.ratio()).c_str(),
                    c.pool && c.ran() ? std::to_string(c.kernel_memory()).c_str() : "null",
                    c.pool && c.ran() ? std::to_string(c.pagerd_memory()).c_str() : "null",
                    c.pool && c.ran() ? std::to_string(c.pagerd_memory_cache()).c_str() : "null",
                    c.failure.empty() ? "null" : json_string(c.failure).c_str(),
                    c.skipped.empty() ? "null" : json_string(c.skipped).c_str());
        side(c.kernel, false);
        std::printf(",\"pagerd\":");
        side(c.pagerd, true);
        std::printf("}");
    }
    std::printf("]}");
}

}  // namespace pagerd::bench
