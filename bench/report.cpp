// Output of pagerd-bench: an aligned table for people, or one JSON object for scripts.
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

double us_per_page(double seconds, std::uint64_t pages) { return seconds * 1e6 / static_cast<double>(pages); }

std::string fmt_side(double seconds, std::uint64_t pages, bool per_page)
{
    if (seconds <= 0 || pages == 0) return "-";
    return fmt(per_page ? us_per_page(seconds, pages) : gbps(seconds, pages));
}

// Width in terminal columns of UTF-8 text (every code point counts one).
std::size_t columns(const std::string& s)
{
    std::size_t n = 0;
    for (const char c : s) n += (static_cast<unsigned char>(c) & 0xc0) != 0x80;
    return n;
}

void cell(const std::string& s, std::size_t width, bool left)
{
    const std::string pad(width > columns(s) ? width - columns(s) : 0, ' ');
    std::printf("%s", left ? (s + pad).c_str() : (pad + s).c_str());
}

std::string us(std::uint64_t ns) { return fmt(static_cast<double>(ns) / 1000.0) + " µs"; }
std::string us_or_dash(double ns) { return ns >= 0 ? fmt(ns / 1000.0) : "-"; }
std::string json_ns(double ns)  // whole nanoseconds, or null
{
    if (!(ns >= 0) || !std::isfinite(ns)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f", ns);
    return buf;
}
std::string kib(long long k) { return k >= 0 ? fmt(static_cast<double>(k) / 1024.0) + " MiB" : "n/a"; }

std::string met_cell(const CaseResult& c)
{
    if (!c.skipped.empty()) return "skipped";
    if (!c.failure.empty()) return "FAILED";
    if (c.target <= 0) return "-";
    return c.met() ? "yes" : "NO";
}

std::string ratio_cell(const CaseResult& c)
{
    if (!c.ran()) return "-";
    return fmt(c.ratio()) + "x";
}

std::string cpu_cell(const RunInfo& info, const CaseResult& c)
{
    if (info.daemon_pid <= 0) return "n/a";
    const double v = c.cpu_per_fault_us();
    if (v >= 0) return fmt(v);
    return c.have_daemon_faults && c.daemon_faults == 0 && c.ran() ? "0 faults" : "-";
}

void print_read_tables(const RunInfo& info, const std::vector<CaseResult>& cases)
{
    std::vector<std::string> notes;
    auto main_rows = [&](bool target_cases) {
        std::vector<std::vector<std::string>> rows;
        int n = 0;
        for (const auto& c : cases) {
            if (c.target_case != target_cases) continue;
            ++n;
            const std::string num = target_cases ? std::to_string(n) : "x" + std::to_string(n);
            rows.push_back({num, c.name, c.baseline, std::to_string(c.pages), fmt_side(c.base_seconds, c.pages, false),
                            fmt_side(c.pagerd_seconds, c.pages, false), ratio_cell(c),
                            c.target > 0 ? ">= " + target_text(c.target) : "-", met_cell(c)});
            if (!c.failure.empty()) notes.push_back(num + " " + c.id + " FAILED: " + c.failure);
            if (!c.skipped.empty()) notes.push_back(num + " " + c.id + " skipped: " + c.skipped);
            if (c.failure.empty() && c.skipped.empty() && !c.region_note.empty())
                notes.push_back(num + " " + c.id + ": no per-region figures: " + c.region_note);
            if (c.fill_seconds > 0)
                notes.push_back(num + " " + c.id + ": fill (map_fd to the return of prefetch(wait=true)) " +
                                fmt(c.fill_seconds * 1e3) + " ms, " +
                                fmt(static_cast<double>(info.file_bytes) / c.fill_seconds / 1e9) +
                                " GB/s; daemon faults during the timed touches: " +
                                std::to_string(c.faults_after_fill));
        }
        return rows;
    };
    const std::vector<std::string> head = {"#", "pagerd side", "baseline", "pages", "baseline GB/s",
                                           "pagerd GB/s", "ratio", "target", "met"};
    const auto targets = main_rows(true);
    if (!targets.empty()) {
        std::printf("read cases with a target (ratio = pagerd / baseline throughput, higher is better)\n\n");
        print_rows(head, targets, 3);
        int met = 0, failed = 0, skipped = 0, total = 0;
        for (const auto& c : cases) {
            if (!c.target_case) continue;
            ++total;
            met += c.met();
            failed += !c.failure.empty();
            skipped += !c.skipped.empty();
        }
        std::printf("\ntargets met: %d of %d", met, total);
        if (failed) std::printf(" (%d FAILED)", failed);
        if (skipped) std::printf(" (%d skipped)", skipped);
        std::printf("\n");
    }
    const auto extras = main_rows(false);
    if (!extras.empty()) {
        std::printf("%sextra read cases (no target)\n\n", targets.empty() ? "" : "\n");
        print_rows(head, extras, 3);
    }

    // The pagerd side in detail.
    std::vector<std::vector<std::string>> rows;
    int nt = 0, nx = 0;
    for (const auto& c : cases) {
        const std::string num = c.target_case ? std::to_string(++nt) : "x" + std::to_string(++nx);
        rows.push_back({num, c.name, c.prefetch, fmt_side(c.base_seconds, c.pages, true),
                        fmt_side(c.pagerd_seconds, c.pages, true), c.have_region ? std::to_string(c.region_faults) : "-",
                        us_or_dash(c.p50_ns), us_or_dash(c.p99_ns), cpu_cell(info, c)});
    }
    std::printf("\n");
    print_rows({"#", "pagerd side", "policy", "baseline µs/page", "pagerd µs/page", "region faults", "p50 µs",
                "p99 µs", "daemon CPU µs/fault"},
               rows, 3);
    std::printf("\nµs/page: wall time / pages touched. region faults, p50, p99: the pagerd region's own figures\n"
                "(Connection::regions() before unmap). daemon CPU: utime+stime of the daemon over the pagerd side\n"
                "(map to last touch) / faults it served meanwhile (status).\n");
    for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
}

}  // namespace

void set_machine(RunInfo& info)
{
    struct utsname u{};
    if (::uname(&u) == 0) info.kernel = u.release;
    info.cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
    const std::time_t now = std::time(nullptr);
    struct tm tm{};
    char buf[32];
    if (::gmtime_r(&now, &tm) && std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm)) info.date = buf;
}

double gbps(double seconds, std::uint64_t pages)
{
    return seconds > 0 ? static_cast<double>(pages * k_page) / seconds / 1e9 : -1;
}

std::string target_text(double t)
{
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1fx", t);
    return buf;
}

// About three significant digits, never in exponent form.
std::string fmt(double v)
{
    char buf[64];
    const char* f = v >= 100 ? "%.0f" : v >= 10 ? "%.1f" : v >= 1 ? "%.2f" : "%.3f";
    std::snprintf(buf, sizeof buf, f, v);
    return buf;
}

std::string json_string(const std::string& s)
{
    std::string out = "\"";
    for (const char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

std::string json_number(double v)
{
    if (!std::isfinite(v) || v < 0) return "null";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

void print_rows(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows,
                std::size_t left)
{
    std::vector<std::size_t> width(head.size());
    for (std::size_t i = 0; i < head.size(); ++i) {
        width[i] = columns(head[i]);
        for (const auto& r : rows) width[i] = std::max(width[i], columns(r[i]));
    }
    auto line = [&](const std::vector<std::string>& r) {
        for (std::size_t i = 0; i < r.size(); ++i) {
            if (i) std::printf("  ");
            cell(r[i], width[i], i < left);
        }
        std::printf("\n");
    };
    line(head);
    for (const auto& r : rows) line(r);
}

void print_table(const RunInfo& info, const std::vector<CaseResult>& cases)
{
    std::printf("file:    %s, %.1f MiB (%llu pages of 4 KiB)\n", info.file.c_str(),
                static_cast<double>(info.file_bytes) / (1 << 20),
                static_cast<unsigned long long>(info.file_bytes / k_page));
    std::printf("daemon:  %s\n", info.daemon.c_str());
    std::printf("machine: kernel %s, %ld CPUs, %s\n", info.kernel.c_str(), info.cpus, info.date.c_str());
    const bool any_reads = info.reads || info.extras;
    const std::string threads = info.threads == 1 ? "1" : "1 and " + std::to_string(info.threads);
    const std::string random = any_reads ? "; random cases touch " + std::to_string(info.random_pages) + " pages" : "";
    if (any_reads || info.writes || info.flushes || info.caches || info.nbd)  // second-copy tells its own runs
        std::printf("threads: %s%s; figures are the median of %u run%s\n", threads.c_str(), random.c_str(),
                    info.repeat, info.repeat == 1 ? "" : "s");
    if (any_reads) {
        std::printf("cold:    %s (%s)\n", info.cold_possible ? "possible" : "NOT possible, cold cases skipped",
                    info.cold_note.c_str());
        if (!info.uffd_loop.empty()) std::printf("uffd loop: its userfaultfd from %s\n", info.uffd_loop.c_str());
        std::printf("\n");
        print_read_tables(info, cases);
    }
    print_second_copy_tables(info);
    print_write_tables(info);
    print_cache_tables(info);
    print_nbd_tables(info);
    print_preload_tables(info);

    if (info.have_status) {
        const auto& s = info.status;
        std::printf("%sdaemon fault latency: p50 %s, p99 %s, max %s over %llu faults, %llu pages installed, "
                    "%llu prefetched\n",
                    info.writes || info.flushes ? "" : "\n", us(s.latency_p50_ns).c_str(),
                    us(s.latency_p99_ns).c_str(), us(s.latency_max_ns).c_str(),
                    static_cast<unsigned long long>(s.faults), static_cast<unsigned long long>(s.pages_installed),
                    static_cast<unsigned long long>(s.pages_prefetched));
        const char* over = !info.own_daemon ? "since that daemon started, including its other clients"
                           : !info.writes && !info.flushes ? "over every pagerd case of this run"
                           : any_reads ? "over every pagerd case of this run: reads, loads and write faults"
                                       : "over every pagerd case of this run: loads and write faults";
        std::printf("  (the daemon's counters are cumulative: %s)\n", over);
    }
    if (info.daemon_pid > 0)
        std::printf("daemon memory: peak RSS (VmHWM) %s, RSS now %s\n", kib(info.daemon_peak_rss_kib).c_str(),
                    kib(info.daemon_rss_kib).c_str());
    else if (any_reads || info.writes || info.flushes)
        std::printf("daemon memory: n/a (a running daemon: its pid is not known)\n");
    for (const auto& e : info.errors) std::printf("ERROR: %s\n", e.c_str());
}

void print_json(const RunInfo& info, const std::vector<CaseResult>& cases)
{
    auto u = [](std::uint64_t v) { return static_cast<unsigned long long>(v); };
    std::printf("{\"kernel\":%s,\"cpus\":%ld,\"date\":%s,", json_string(info.kernel).c_str(), info.cpus,
                json_string(info.date).c_str());
    std::printf("\"file\":%s,\"file_bytes\":%llu,\"threads\":%u,\"repeat\":%u,\"random_pages\":%llu,",
                json_string(info.file).c_str(), u(info.file_bytes), info.threads, info.repeat, u(info.random_pages));
    std::printf("\"cold_possible\":%s,\"cold_note\":%s,\"uffd_loop\":%s,\"cases\":[",
                info.cold_possible ? "true" : "false", json_string(info.cold_note).c_str(),
                info.uffd_loop.empty() ? "null" : json_string(info.uffd_loop).c_str());
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases[i];
        auto side = [&](double seconds) {
            const bool ok = seconds > 0 && c.ran();
            return std::string("\"seconds\":") + json_number(ok ? seconds : -1) +
                   ",\"us_per_page\":" + json_number(ok ? us_per_page(seconds, c.pages) : -1) +
                   ",\"gbps\":" + json_number(ok ? gbps(seconds, c.pages) : -1);
        };
        std::string hist;
        for (std::size_t k = 0; k < c.histogram.size(); ++k) hist += (k ? "," : "") + std::to_string(c.histogram[k]);
        const double cpu = info.daemon_pid > 0 ? c.cpu_seconds : -1;
        std::printf("%s{\"id\":%s,\"name\":%s,\"title\":%s,\"target_case\":%s,\"pages\":%llu,\"threads\":%u,"
                    "\"baseline\":{\"name\":%s,\"title\":%s,%s,\"latency_p50_ns\":%s,\"latency_p99_ns\":%s},"
                    "\"pagerd\":{\"prefetch\":%s,%s,\"region_found\":%s,\"region_note\":%s,\"region_faults\":%llu,"
                    "\"latency_p50_ns\":%s,\"latency_p99_ns\":%s,\"latency_histogram\":[%s],"
                    "\"daemon_cpu_seconds\":%s,\"daemon_faults\":%s,\"daemon_cpu_us_per_fault\":%s,"
                    "\"pages_prefetched\":%llu,\"fill_seconds\":%s,\"fill_gbps\":%s,\"faults_after_fill\":%s},"
                    "\"ratio\":%s,\"target\":%s,\"met\":%s,\"failure\":%s,\"skipped\":%s}",
                    i ? "," : "", json_string(c.id).c_str(), json_string(c.name).c_str(), json_string(c.title).c_str(),
                    c.target_case ? "true" : "false", u(c.pages), c.threads, json_string(c.baseline).c_str(),
                    json_string(c.baseline_title).c_str(), side(c.base_seconds).c_str(),
                    json_ns(c.base_p50_ns).c_str(), json_ns(c.base_p99_ns).c_str(),
                    json_string(c.prefetch).c_str(), side(c.pagerd_seconds).c_str(), c.have_region ? "true" : "false",
                    c.region_note.empty() ? "null" : json_string(c.region_note).c_str(),
                    u(c.region_faults), json_ns(c.p50_ns).c_str(), json_ns(c.p99_ns).c_str(), hist.c_str(),
                    json_number(cpu).c_str(), c.have_daemon_faults ? std::to_string(c.daemon_faults).c_str() : "null",
                    json_number(info.daemon_pid > 0 ? c.cpu_per_fault_us() : -1).c_str(), u(c.pages_prefetched),
                    json_number(c.fill_seconds).c_str(),
                    json_number(c.fill_seconds > 0 ? static_cast<double>(info.file_bytes) / c.fill_seconds / 1e9 : -1)
                        .c_str(),
                    c.fill_seconds > 0 ? std::to_string(c.faults_after_fill).c_str() : "null",
                    json_number(c.ratio()).c_str(), json_number(c.target).c_str(),
                    c.target > 0 && c.skipped.empty() ? (c.met() ? "true" : "false") : "null",
                    c.failure.empty() ? "null" : json_string(c.failure).c_str(),
                    c.skipped.empty() ? "null" : json_string(c.skipped).c_str());
    }
    std::printf("]");
    print_write_json(info);
    print_cache_json(info);
    print_nbd_json(info);
    print_preload_json(info);
    print_second_copy_json(info);
    std::printf(",\"daemon\":{\"description\":%s,\"pid\":%s,\"peak_rss_kib\":%s,\"rss_kib\":%s,\"status\":",
                json_string(info.daemon).c_str(), info.daemon_pid > 0 ? std::to_string(info.daemon_pid).c_str() : "null",
                info.daemon_peak_rss_kib >= 0 ? std::to_string(info.daemon_peak_rss_kib).c_str() : "null",
                info.daemon_rss_kib >= 0 ? std::to_string(info.daemon_rss_kib).c_str() : "null");
    if (info.have_status) {
        const auto& s = info.status;
        std::string hist;
        for (std::size_t k = 0; k < s.latency_histogram.size(); ++k)
            hist += (k ? "," : "") + std::to_string(s.latency_histogram[k]);
        std::printf("{\"version\":%s,\"workers\":%u,\"p50_ns\":%llu,\"p99_ns\":%llu,\"max_ns\":%llu,\"faults\":%llu,"
                    "\"pages_installed\":%llu,\"pages_prefetched\":%llu,\"latency_histogram\":[%s],\"cumulative\":%s}",
                    json_string(s.version).c_str(), s.workers, u(s.latency_p50_ns), u(s.latency_p99_ns),
                    u(s.latency_max_ns), u(s.faults), u(s.pages_installed), u(s.pages_prefetched), hist.c_str(),
                    json_string(info.own_daemon ? "this run" : "since the daemon started").c_str());
    } else {
        std::printf("null");
    }
    std::printf("},\"errors\":[");
    for (std::size_t i = 0; i < info.errors.size(); ++i)
        std::printf("%s%s", i ? "," : "", json_string(info.errors[i]).c_str());
    std::printf("]}\n");
}

}  // namespace pagerd::bench
