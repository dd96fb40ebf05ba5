// Output of the write and flush cases: their tables, and their members of the JSON object.
#include <cmath>
#include <cstdio>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

const WriteCase* write_baseline(const RunInfo& info, const char* kind, unsigned threads)
{
    for (const auto& c : info.write_cases)
        if (c.kind == kind && c.threads == threads && c.seconds > 0) return &c;
    return nullptr;
}

const FlushCase* flush_baseline(const RunInfo& info, const char* name)
{
    for (const auto& c : info.flush_cases)
        if (c.name == name && c.seconds > 0) return &c;
    return nullptr;
}

// Throughput ratio: above 1, `c` was faster than the baseline.
double ratio(double base_seconds, double seconds) { return base_seconds > 0 && seconds > 0 ? base_seconds / seconds : -1; }
double write_ratio(const RunInfo& info, const WriteCase& c, const char* kind)
{
    const WriteCase* b = write_baseline(info, kind, c.threads);
    return b ? ratio(b->seconds, c.seconds) : -1;
}
double flush_ratio(const RunInfo& info, const FlushCase& c, const char* name)
{
    const FlushCase* b = flush_baseline(info, name);
    return b ? ratio(b->seconds, c.seconds) : -1;
}

double us_per_page(const WriteCase& c) { return c.seconds > 0 ? c.seconds * 1e6 / static_cast<double>(c.pages) : -1; }
double mb_per_s(const FlushCase& c)
{
    return c.seconds > 0 ? static_cast<double>(c.pages * k_page) / c.seconds / 1e6 : -1;
}
std::string cell(double v) { return v > 0 ? fmt(v) : "-"; }
std::string json_or_null(const std::string& s) { return s.empty() ? "null" : json_string(s); }

}  // namespace

void print_write_tables(const RunInfo& info)
{
    if (!info.writes && !info.flushes) return;
    std::printf("\nwrites:  %llu pages (%.1f MiB) from offset 0 of %s, in order, one byte per page\n",
                static_cast<unsigned long long>(info.write_pages),
                static_cast<double>(info.write_pages * k_page) / (1 << 20), info.write_file.c_str());
    std::vector<std::string> notes;
    if (info.writes) {
        std::vector<std::vector<std::string>> rows;
        for (const auto& c : info.write_cases) {
            rows.push_back({c.name, std::to_string(c.pages), cell(us_per_page(c)), cell(write_ratio(info, c, "mprotect")),
                            cell(write_ratio(info, c, "anon"))});
            if (!c.note.empty()) notes.push_back(c.name + " skipped: " + c.note);
        }
        std::printf("\n");
        print_rows({"write case", "pages", "µs/page", "vs mprotect", "vs anon"}, rows);
        std::printf("\nmprotect: anonymous memory, populated, then PROT_READ; a SIGSEGV handler makes the page\n"
                    "writable. anon: the first touch of fresh anonymous memory is the write. loaded: a Shared\n"
                    "region whose pages were all read first (tracking cost alone). fresh: a new Shared region,\n"
                    "the first touch is the write (load + tracking). vs X: X's µs/page over this case's at the\n"
                    "same thread count (throughput ratio: above 1 means faster than X).\n");
    }
    if (info.flushes) {
        std::vector<std::vector<std::string>> rows;
        for (const auto& c : info.flush_cases) {
            const double ms = c.seconds > 0 ? c.seconds * 1e3 : -1;
            rows.push_back({c.name, std::to_string(c.pages), c.seconds > 0 ? std::to_string(c.written_pages) : "-",
                            cell(ms), cell(mb_per_s(c)), cell(flush_ratio(info, c, "pwrite-4k")),
                            cell(flush_ratio(info, c, "pwrite-big"))});
            if (!c.note.empty()) notes.push_back(c.name + " skipped: " + c.note);
        }
        std::printf("\n");
        print_rows({"flush case", "pages", "written", "ms", "MB/s", "vs pwrite-4k", "vs pwrite-big"}, rows);
        std::printf("\nEvery page dirty (one byte each); timed: pwrite-4k, one pwrite per page + fdatasync;\n"
                    "pwrite-big, one pwrite of all pages + fdatasync; flush-X, Connection::flush of a fresh\n"
                    "Shared region with tracking X (daemon io_uring writes + fdatasync). MB/s: 4 KiB x pages,\n"
                    "1 MB = 10^6 bytes. vs X: throughput ratio (above 1 means faster than X).\n");
    }
    for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
    std::printf("\n");
}

void print_write_json(const RunInfo& info)
{
    std::string run;
    auto add = [&run](bool on, const char* name) {
        if (on) run += std::string(run.empty() ? "\"" : ",\"") + name + "\"";
    };
    add(info.reads, "read");
    add(info.extras, "extra");
    add(info.writes, "write");
    add(info.flushes, "flush");
    std::printf(",\"cases_run\":[%s],\"write_pages\":%llu,\"write_file\":%s,\"write_cases\":[", run.c_str(),
                static_cast<unsigned long long>(info.write_pages), json_or_null(info.write_file).c_str());
    for (std::size_t i = 0; i < info.write_cases.size(); ++i) {
        const auto& c = info.write_cases[i];
        std::printf("%s{\"name\":%s,\"kind\":%s,\"tracking\":%s,\"threads\":%u,\"pages\":%llu,\"us_per_page\":%s,"
                    "\"ratio_mprotect\":%s,\"ratio_anon\":%s,\"note\":%s}",
                    i ? "," : "", json_string(c.name).c_str(), json_string(c.kind).c_str(),
                    json_or_null(c.strategy).c_str(), c.threads, static_cast<unsigned long long>(c.pages),
                    json_number(us_per_page(c)).c_str(), json_number(write_ratio(info, c, "mprotect")).c_str(),
                    json_number(write_ratio(info, c, "anon")).c_str(), json_or_null(c.note).c_str());
    }
    std::printf("],\"flush_cases\":[");
    for (std::size_t i = 0; i < info.flush_cases.size(); ++i) {
        const auto& c = info.flush_cases[i];
        std::printf("%s{\"name\":%s,\"tracking\":%s,\"pages\":%llu,\"pages_written\":%s,\"seconds\":%s,\"mb_per_s\":%s,"
                    "\"ratio_pwrite_4k\":%s,\"ratio_pwrite_big\":%s,\"note\":%s}",
                    i ? "," : "", json_string(c.name).c_str(), json_or_null(c.strategy).c_str(),
                    static_cast<unsigned long long>(c.pages),
                    c.seconds > 0 ? std::to_string(c.written_pages).c_str() : "null", json_number(c.seconds).c_str(),
                    json_number(mb_per_s(c)).c_str(), json_number(flush_ratio(info, c, "pwrite-4k")).c_str(),
                    json_number(flush_ratio(info, c, "pwrite-big")).c_str(), json_or_null(c.note).c_str());
    }
    std::printf("]");
}

}  // namespace pagerd::bench
