// Output of pagerd-bench: an aligned table for people, or one JSON object for scripts.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

double us_per_page(double seconds, std::uint64_t pages) { return seconds * 1e6 / static_cast<double>(pages); }
double gbps(double seconds, std::uint64_t pages) { return static_cast<double>(pages * k_page) / seconds / 1e9; }
bool valid(const CaseResult& c) { return c.mmap_seconds > 0 && c.pagerd_seconds > 0 && c.pages > 0; }

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

void print_read_table(const std::vector<CaseResult>& cases)
{
    const std::vector<std::string> head = {"case", "pages", "mmap µs/page", "pagerd µs/page",
                                           "mmap GB/s", "pagerd GB/s", "pagerd/mmap"};
    std::vector<std::vector<std::string>> rows;
    for (const auto& c : cases)
        rows.push_back({c.name, std::to_string(c.pages), fmt_side(c.mmap_seconds, c.pages, true),
                        fmt_side(c.pagerd_seconds, c.pages, true), fmt_side(c.mmap_seconds, c.pages, false),
                        fmt_side(c.pagerd_seconds, c.pages, false),
                        valid(c) ? fmt(c.mmap_seconds / c.pagerd_seconds) : "-"});
    print_rows(head, rows);
    std::printf("\npagerd/mmap is the ratio of throughput: above 1 means pagerd was faster.\n");
}

}  // namespace

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

void print_rows(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows)
{
    std::vector<std::size_t> width(head.size());
    for (std::size_t i = 0; i < head.size(); ++i) {
        width[i] = columns(head[i]);
        for (const auto& r : rows) width[i] = std::max(width[i], columns(r[i]));
    }
    auto line = [&](const std::vector<std::string>& r) {
        for (std::size_t i = 0; i < r.size(); ++i) {
            if (i) std::printf("  ");
            cell(r[i], width[i], i == 0);
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
    const std::string threads = info.threads == 1 ? "1" : "1 and " + std::to_string(info.threads);
    const std::string random = info.reads ? "; random cases touch " + std::to_string(info.random_pages) + " pages" : "";
    std::printf("threads: %s%s; figures are the median of %u run%s\n", threads.c_str(), random.c_str(),
                info.repeat, info.repeat == 1 ? "" : "s");
    if (info.reads) {
        std::printf("cold:    %s (%s)\n\n", info.cold_possible ? "possible" : "NOT possible, cold cases skipped",
                    info.cold_note.c_str());
        print_read_table(cases);
    }
    print_write_tables(info);

    if (info.have_status) {
        const auto& s = info.status;
        std::printf("daemon fault latency: p50 %s, p99 %s, max %s over %llu faults, %llu pages installed\n",
                    us(s.latency_p50_ns).c_str(), us(s.latency_p99_ns).c_str(), us(s.latency_max_ns).c_str(),
                    static_cast<unsigned long long>(s.faults),
                    static_cast<unsigned long long>(s.pages_installed));
        const char* over = !info.own_daemon ? "since that daemon started, including its other clients"
                           : !info.writes && !info.flushes ? "over every pagerd case of this run, hot and cold together"
                           : info.reads ? "over every pagerd case of this run: reads hot and cold, loads and write faults"
                                        : "over every pagerd case of this run: loads and write faults";
        std::printf("  (the daemon's counters are cumulative: %s)\n", over);
    }
    for (const auto& e : info.errors) std::printf("ERROR: %s\n", e.c_str());
}

void print_json(const RunInfo& info, const std::vector<CaseResult>& cases)
{
    std::printf("{\"file\":%s,\"file_bytes\":%llu,\"threads\":%u,\"repeat\":%u,\"random_pages\":%llu,",
                json_string(info.file).c_str(), static_cast<unsigned long long>(info.file_bytes), info.threads,
                info.repeat, static_cast<unsigned long long>(info.random_pages));
    std::printf("\"cold_possible\":%s,\"cold_note\":%s,\"cases\":[", info.cold_possible ? "true" : "false",
                json_string(info.cold_note).c_str());
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases[i];
        const double nan = std::nan("");
        const double mu = c.mmap_seconds > 0 ? us_per_page(c.mmap_seconds, c.pages) : nan;
        const double pu = c.pagerd_seconds > 0 ? us_per_page(c.pagerd_seconds, c.pages) : nan;
        const double mg = c.mmap_seconds > 0 ? gbps(c.mmap_seconds, c.pages) : nan;
        const double pg = c.pagerd_seconds > 0 ? gbps(c.pagerd_seconds, c.pages) : nan;
        std::printf("%s{\"name\":%s,\"pages\":%llu,\"mmap_us_per_page\":%s,\"pagerd_us_per_page\":%s,"
                    "\"mmap_gbps\":%s,\"pagerd_gbps\":%s,\"ratio\":%s}",
                    i ? "," : "", json_string(c.name).c_str(), static_cast<unsigned long long>(c.pages),
                    json_number(mu).c_str(), json_number(pu).c_str(), json_number(mg).c_str(),
                    json_number(pg).c_str(), json_number(valid(c) ? c.mmap_seconds / c.pagerd_seconds : nan).c_str());
    }
    std::printf("]");
    print_write_json(info);
    std::printf(",\"daemon\":");
    if (info.have_status) {
        const auto& s = info.status;
        std::printf("{\"p50_ns\":%llu,\"p99_ns\":%llu,\"max_ns\":%llu,\"faults\":%llu,\"pages_installed\":%llu,"
                    "\"cumulative\":%s}",
                    static_cast<unsigned long long>(s.latency_p50_ns), static_cast<unsigned long long>(s.latency_p99_ns),
                    static_cast<unsigned long long>(s.latency_max_ns), static_cast<unsigned long long>(s.faults),
                    static_cast<unsigned long long>(s.pages_installed),
                    json_string(info.own_daemon ? "this run" : "since the daemon started").c_str());
    } else {
        std::printf("null");
    }
    std::printf(",\"errors\":[");
    for (std::size_t i = 0; i < info.errors.size(); ++i)
        std::printf("%s%s", i ? "," : "", json_string(info.errors[i]).c_str());
    std::printf("]}\n");
}

}  // namespace pagerd::bench
