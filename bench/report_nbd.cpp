// Output of the NBD cases (--cases nbd): their tables, and their JSON member.
#include <cstdio>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

double mbps(double seconds, std::uint64_t pages)
{
    return seconds > 0 ? static_cast<double>(pages * k_page) / seconds / 1e6 : -1;
}

std::string cell(double v, const char* unit = "") { return v >= 0 ? fmt(v) + unit : "-"; }

std::string percent(double cpu, double seconds) { return cpu >= 0 && seconds > 0 ? fmt(cpu / seconds * 100) + " %" : "-"; }

std::string met_cell(const NbdCase& c)
{
    if (!c.skipped.empty()) return "skipped";
    if (!c.failure.empty()) return "FAILED";
    if (c.target <= 0) return "-";
    return c.met() ? "yes" : "NO";
}

std::string args_cell(const std::vector<std::string>& args)
{
    std::string s;
    for (const auto& a : args) s += (s.empty() ? "" : " ") + a;
    return s.empty() ? "(defaults)" : s;
}

}  // namespace

void print_nbd_tables(const RunInfo& info)
{
    if (!info.nbd) return;
    const NbdRun& run = info.nbd_run;
    std::printf("\nNBD cases (ratio = pagerd / baseline throughput, higher is better; MB/s = 10^6 bytes/s)\n\n");
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> notes;
    int met = 0, total = 0, failed = 0;
    for (const auto& c : run.cases) {
        rows.push_back({c.num, c.name, c.baseline, std::to_string(c.pages), cell(mbps(c.base_seconds, c.pages)),
                        cell(mbps(c.pagerd_seconds, c.pages)), c.ran() ? fmt(c.ratio()) + "x" : "-",
                        c.target > 0 ? ">= " + target_text(c.target) : "-", met_cell(c)});
        if (c.target_case) {
            ++total;
            met += c.met();
            failed += !c.failure.empty();
        }
        if (!c.failure.empty()) notes.push_back(c.num + " FAILED: " + c.failure);
        for (const auto& n : c.notes) notes.push_back(c.num + " " + n);
    }
    print_rows({"#", "pagerd side", "baseline", "pages", "baseline MB/s", "pagerd MB/s", "ratio", "target", "met"}, rows, 3);
    std::printf("\nNBD targets met: %d of %d", met, total);
    if (failed) std::printf(" (%d FAILED)", failed);
    std::printf("; the group took %.0f s; load average at its start %s\n", run.seconds, run.load.c_str());
    for (const auto& c : run.cases) std::printf("%-3s %s\n", c.num.c_str(), c.title.c_str());

    // The pagerd side as the daemon saw it.
    rows.clear();
    for (const auto& c : run.cases) {
        const NbdSide& d = c.side;
        if (!c.ran()) continue;
        const double avg_kib = d.have_store && d.store.reads
                                   ? static_cast<double>(d.store.read_bytes) / static_cast<double>(d.store.reads) / 1024
                                   : -1;
        rows.push_back({c.num, args_cell(d.daemon_args), c.prefetch, fmt(c.pagerd_seconds * 1e3),
                        d.have_store ? std::to_string(d.store.reads) : "-", cell(avg_kib),
                        d.have_store ? fmt(static_cast<double>(d.store.read_latency_avg_ns) / 1e3) : "-",
                        d.have_store ? fmt(static_cast<double>(d.store.read_latency_max_ns) / 1e6) : "-",
                        std::to_string(d.connections_max), cell(d.inflight_little),
                        cell(d.inflight_mean) + " / " + std::to_string(d.inflight_max),
                        percent(d.daemon_cpu, c.pagerd_seconds),
                        percent(d.busiest_cpu, c.pagerd_seconds) + (d.busiest.empty() ? "" : " " + d.busiest),
                        percent(d.server_cpu, c.pagerd_seconds)});
    }
    std::printf("\n");
    print_rows({"#", "pagerd options", "policy", "ms", "reads", "KiB/read", "avg µs", "max ms", "conns",
                "in flight", "sampled mean/max", "daemon CPU", "busiest thread", "nbdkit CPU"},
               rows, 3);
    std::printf("\nms: the pagerd side's wall time (sequential: map_store + touches; random: touches). reads,\n"
                "KiB/read, avg µs, max ms: Connection::stores() of the side's fresh daemon before the unmap\n"
                "(NBD reads, their average size, their average and longest latency). conns: connections open\n"
                "at once (sampled). in flight: reads x avg latency / wall time (Little's law); sampled:\n"
                "StoreInfo::inflight every 5 ms from a second connection. CPU: utime+stime over the side / its\n"
                "wall time (daemon, its busiest thread, nbdkit), 100 %% = one CPU.\n");

    // What one GiB costs the daemon's busiest thread: the most one CPU lets it read.
    for (const auto& c : run.cases) {
        const NbdSide& d = c.side;
        if (!c.ran() || c.random || d.busiest_cpu <= 0) continue;
        const double gib = static_cast<double>(c.pages * k_page) / (1 << 30);
        notes.push_back(c.num + " busiest daemon thread (" + d.busiest + "): " + fmt(d.busiest_cpu / gib) +
                        " s of CPU per GiB, so at most " + fmt(gib * (1 << 30) / d.busiest_cpu / 1e6) +
                        " MB/s at 100 % of one CPU; map " + fmt(d.map_seconds * 1e3) + " ms" +
                        (d.have_region ? "; region faults " + std::to_string(d.faults) : ""));
    }

    rows.clear();
    for (const auto& c : run.cases) {
        if (!c.ran() || (c.num != "1" && c.num != "2")) continue;
        rows.push_back({c.num, c.baseline, fmt(c.base_seconds * 1e3),
                        c.random ? fmt(c.base_seconds * 1e6 / static_cast<double>(c.pages)) : "-",
                        percent(c.base_cpu, c.base_seconds), percent(c.base_server_cpu, c.base_seconds)});
    }
    const NbdCase* seq = nullptr;
    for (const auto& c : run.cases)
        if (c.num == "1" && c.ran()) seq = &c;
    for (const auto& r : run.copies) {
        const double v = mbps(r.seconds, r.pages);
        rows.push_back({"", "nbdcopy -C " + std::to_string(r.connections) + " -R " + std::to_string(r.requests),
                        r.seconds > 0 ? fmt(r.seconds * 1e3) : "-", "-", percent(r.cpu, r.seconds),
                        percent(r.server_cpu, r.seconds), cell(v),
                        seq && v > 0 ? fmt(mbps(seq->pagerd_seconds, seq->pages) / v) + "x" : "-"});
    }
    for (auto& r : rows)
        if (r.size() == 6) {
            const NbdCase* c = nullptr;
            for (const auto& x : run.cases)
                if (x.num == r[0]) c = &x;
            r.push_back(c ? cell(mbps(c->base_seconds, c->pages)) : "-");
            r.push_back(c && c->num == "1" ? "1x" : "-");
        }
    if (!rows.empty()) {
        std::printf("\n");
        print_rows({"#", "baseline", "ms", "µs/read", "its CPU", "nbdkit CPU", "MB/s", "case 1 pagerd / this"}, rows, 2);
        std::printf("\nnbdcopy -C N -R M: --connections=N --requests=M (its defaults: 4 x 64, each 256 KiB); 1 x 16 is\n"
                    "about what pagerd keeps in flight on its one connection with the default --readahead-max.\n");
    }
    std::printf("\nserver:   %s\n", run.server.c_str());
    std::printf("export:   %s\n", run.export_file.c_str());
    std::printf("baseline: %s (its defaults), timed fork to exit; libnbd %s\n", run.nbdcopy.c_str(),
                run.libnbd.empty() ? "?" : run.libnbd.c_str());
    for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
}

void print_nbd_json(const RunInfo& info)
{
    if (!info.nbd) return;
    const NbdRun& run = info.nbd_run;
    auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
    std::printf(",\"nbd_seconds\":%s,\"nbd_load_average\":%s,\"nbd_server\":%s,\"nbd_export\":%s,\"nbd_nbdcopy\":%s,"
                "\"nbd_libnbd\":%s,\"nbd_cases\":[",
                json_number(run.seconds).c_str(), json_string(run.load).c_str(), json_string(run.server).c_str(),
                json_string(run.export_file).c_str(), json_string(run.nbdcopy).c_str(), json_string(run.libnbd).c_str());
    for (std::size_t i = 0; i < run.cases.size(); ++i) {
        const auto& c = run.cases[i];
        const NbdSide& d = c.side;
        std::string args;
        for (std::size_t k = 0; k < d.daemon_args.size(); ++k) {
            if (k) args += ",";
            args += json_string(d.daemon_args[k]);
        }
        std::printf("%s{\"num\":%s,\"id\":%s,\"name\":%s,\"baseline\":%s,\"title\":%s,\"target_case\":%s,\"pages\":%llu,"
                    "\"threads\":%u,\"prefetch\":%s,\"baseline_seconds\":%s,\"baseline_mbps\":%s,\"baseline_cpu_seconds\":%s,"
                    "\"baseline_nbdkit_cpu_seconds\":%s,\"pagerd_seconds\":%s,\"pagerd_mbps\":%s,\"ratio\":%s,\"target\":%s,"
                    "\"met\":%s,\"failure\":%s,\"pagerd\":{\"daemon_args\":[%s],\"map_seconds\":%s,",
                    i ? "," : "", json_string(c.num).c_str(), json_string(c.id).c_str(), json_string(c.name).c_str(),
                    json_string(c.baseline).c_str(), json_string(c.title).c_str(), c.target_case ? "true" : "false",
                    u(c.pages), c.threads, json_string(c.prefetch).c_str(), json_number(c.base_seconds).c_str(),
                    json_number(c.ran() ? static_cast<double>(c.pages * k_page) / c.base_seconds / 1e6 : -1).c_str(),
                    json_number(c.base_cpu).c_str(), json_number(c.base_server_cpu).c_str(),
                    json_number(c.pagerd_seconds).c_str(),
                    json_number(c.ran() ? static_cast<double>(c.pages * k_page) / c.pagerd_seconds / 1e6 : -1).c_str(),
                    json_number(c.ratio()).c_str(), json_number(c.target).c_str(),
                    c.target > 0 && c.failure.empty() ? (c.met() ? "true" : "false") : "null",
                    c.failure.empty() ? "null" : json_string(c.failure).c_str(), args.c_str(),
                    json_number(d.map_seconds).c_str());
        if (d.have_store)
            std::printf("\"store\":{\"connections\":%u,\"reads\":%llu,\"read_bytes\":%llu,\"read_errors\":%llu,"
                        "\"retries\":%llu,\"timeouts\":%llu,\"read_latency_avg_ns\":%llu,\"read_latency_max_ns\":%llu},",
                        d.store.connections, u(d.store.reads), u(d.store.read_bytes), u(d.store.read_errors),
                        u(d.store.retries), u(d.store.timeouts), u(d.store.read_latency_avg_ns),
                        u(d.store.read_latency_max_ns));
        else
            std::printf("\"store\":null,");
        std::printf("\"inflight_little\":%s,\"inflight_sampled_mean\":%s,\"inflight_sampled_max\":%u,\"samples\":%u,"
                    "\"connections_max\":%u,\"region_faults\":%s,\"latency_p50_ns\":%s,\"latency_p99_ns\":%s,"
                    "\"daemon_cpu_seconds\":%s,\"busiest_thread_cpu_seconds\":%s,\"busiest_thread\":%s,"
                    "\"nbdkit_cpu_seconds\":%s}}",
                    json_number(d.inflight_little).c_str(), json_number(d.inflight_mean).c_str(), d.inflight_max,
                    d.samples, d.connections_max, d.have_region ? std::to_string(d.faults).c_str() : "null",
                    d.have_region ? std::to_string(d.p50_ns).c_str() : "null",
                    d.have_region ? std::to_string(d.p99_ns).c_str() : "null", json_number(d.daemon_cpu).c_str(),
                    json_number(d.busiest_cpu).c_str(), json_string(d.busiest).c_str(), json_number(d.server_cpu).c_str());
    }
    std::printf("]");
}

}  // namespace pagerd::bench
