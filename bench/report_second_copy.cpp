// Output of --cases second-copy: its table, and its member of the JSON object.
#include <algorithm>
#include <cstdio>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

constexpr double k_mib = 1024.0 * 1024.0;

double med(std::vector<double> v) { return median_of(std::move(v)); }
double best(const std::vector<double>& v) { return v.empty() ? -1 : *std::min_element(v.begin(), v.end()); }
double mbps(const SecondCopyRow& r, double seconds)
{
    return seconds > 0 ? static_cast<double>(r.bytes) / seconds / 1e6 : -1;
}
bool ran(const SecondCopyRow& r) { return r.failure.empty() && r.skipped.empty() && !r.seconds.empty(); }

// The mmap row of the same pattern and state.
const SecondCopyRow* baseline(const SecondCopyRun& run, const SecondCopyRow& r)
{
    for (const auto& b : run.rows)
        if (b.method == SecondCopyMethod::Mmap && b.pattern == r.pattern && b.hot == r.hot && ran(b)) return &b;
    return nullptr;
}

// Median over the runs of this row's throughput over the baseline's in the same run.
double ratio_median(const SecondCopyRow& r, const SecondCopyRow* b)
{
    if (!b || !ran(r)) return -1;
    std::vector<double> v;
    for (std::size_t i = 0; i < r.seconds.size() && i < b->seconds.size(); ++i) v.push_back(b->seconds[i] / r.seconds[i]);
    return med(v);
}
double ratio_best(const SecondCopyRow& r, const SecondCopyRow* b)
{
    return b && ran(r) ? best(b->seconds) / best(r.seconds) : -1;
}
double cpu_per_gib(const SecondCopyRow& r)
{
    return ran(r) ? med(r.cpu_seconds) / (static_cast<double>(r.bytes) / (k_mib * 1024)) : -1;
}
std::string cell(double v) { return v >= 0 ? fmt(v) : "-"; }
std::string mib_cell(const std::vector<double>& v) { return v.empty() ? "-" : fmt(med(v) / k_mib); }
char letter(SecondCopyMethod m) { return static_cast<char>('a' + static_cast<int>(m)); }

}  // namespace

void print_second_copy_tables(const RunInfo& info)
{
    if (!info.second_copy) return;
    const SecondCopyRun& run = info.second;
    std::printf("\nsecond copy in the kernel's page cache: %s MiB of the file in 256 KiB blocks, 1 thread, no daemon, "
                "%u runs of every row (best and median)\n",
                fmt(static_cast<double>(run.bytes) / k_mib).c_str(), run.runs);
    std::printf("file system:   %s; %s\n", run.fs.c_str(), run.dio_align.c_str());
    std::printf("RWF_DONTCACHE: %s\n", run.dontcache.c_str());
    std::printf("cold:          %s, before every cold row\n", run.drop.c_str());
    std::printf("hot:           the whole file read (buffered pread, 1 MiB) before every hot row\n");
    std::printf("seq:           every block in order; perm: every block once, in a shuffled order; rand: %llu "
                "blocks drawn\n               with replacement among %llu (%llu distinct: the others are re-reads); "
                "fixed seed\n",
                static_cast<unsigned long long>(run.random_blocks),
                static_cast<unsigned long long>(run.bytes / k_second_copy_block),
                static_cast<unsigned long long>(run.distinct_blocks));
    std::printf("load average at the start: %s\n\n", run.load.c_str());
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> notes;
    for (const auto& r : run.rows) {
        const SecondCopyRow* b = baseline(run, r);
        const std::string name = std::string(1, letter(r.method)) + " " + second_copy_method_name(r.method);
        const bool ok = ran(r);
        rows.push_back({r.pattern, r.hot ? "hot" : "cold", name,
                        ok ? fmt(mbps(r, best(r.seconds))) : "-", ok ? fmt(mbps(r, med(r.seconds))) : "-",
                        r.method == SecondCopyMethod::Mmap ? "1" : cell(ratio_best(r, b)),
                        r.method == SecondCopyMethod::Mmap ? "1" : cell(ratio_median(r, b)), cell(cpu_per_gib(r)),
                        mib_cell(r.resident_before), mib_cell(r.resident_after)});
        const std::string id = r.pattern + " " + (r.hot ? "hot" : "cold") + " " + name;
        if (!r.skipped.empty()) notes.push_back(id + " skipped: " + r.skipped);
        if (!r.failure.empty()) notes.push_back(id + " FAILED: " + r.failure);
    }
    print_rows({"pattern", "state", "method", "MB/s best", "MB/s median", "vs mmap best", "vs mmap median",
                "CPU s/GiB", "cached before MiB", "cached after MiB"},
               rows, 3);
    std::printf("\nMB/s: 10^6 bytes read per second (wall time of the reads alone). vs mmap: throughput over e's\n"
                "(same pattern and state): best over best, and the median of the run-by-run ratios. CPU s/GiB: the\n"
                "process's utime+stime, io_uring's workers included (median). cached before/after: MiB of the file\n"
                "in the kernel's page cache (mincore) before and after the row's reads (median).\n");
    for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
}

void print_second_copy_json(const RunInfo& info)
{
    if (!info.second_copy) return;
    const SecondCopyRun& run = info.second;
    std::printf(",\"second_copy\":{\"fs\":%s,\"dontcache\":%s,\"drop\":%s,\"dio_align\":%s,\"runs\":%u,"
                "\"block_bytes\":%llu,\"bytes\":%llu,\"random_blocks\":%llu,\"distinct_blocks\":%llu,\"rows\":[",
                json_string(run.fs).c_str(), json_string(run.dontcache).c_str(), json_string(run.drop).c_str(),
                json_string(run.dio_align).c_str(), run.runs, static_cast<unsigned long long>(k_second_copy_block),
                static_cast<unsigned long long>(run.bytes), static_cast<unsigned long long>(run.random_blocks),
                static_cast<unsigned long long>(run.distinct_blocks));
    for (std::size_t i = 0; i < run.rows.size(); ++i) {
        const auto& r = run.rows[i];
        const SecondCopyRow* b = baseline(run, r);
        auto list = [](const std::vector<double>& v) {
            std::string s = "[";
            for (std::size_t k = 0; k < v.size(); ++k) {
                if (k) s += ',';
                s += json_number(v[k]);
            }
            return s + "]";
        };
        std::printf("%s{\"pattern\":%s,\"state\":%s,\"method\":%s,\"bytes\":%llu,\"seconds\":%s,\"cpu_seconds\":%s,"
                    "\"resident_before\":%s,\"resident_after\":%s,\"mbps_best\":%s,\"mbps_median\":%s,"
                    "\"vs_mmap_best\":%s,\"vs_mmap_median\":%s,\"skipped\":%s,\"failure\":%s}",
                    i ? "," : "", json_string(r.pattern).c_str(),
                    json_string(r.hot ? "hot" : "cold").c_str(), json_string(second_copy_method_name(r.method)).c_str(),
                    static_cast<unsigned long long>(r.bytes), list(r.seconds).c_str(), list(r.cpu_seconds).c_str(),
                    list(r.resident_before).c_str(), list(r.resident_after).c_str(),
                    json_number(ran(r) ? mbps(r, best(r.seconds)) : -1).c_str(),
                    json_number(ran(r) ? mbps(r, med(r.seconds)) : -1).c_str(), json_number(ratio_best(r, b)).c_str(),
                    json_number(ratio_median(r, b)).c_str(),
                    r.skipped.empty() ? "null" : json_string(r.skipped).c_str(),
                    r.failure.empty() ? "null" : json_string(r.failure).c_str());
    }
    std::printf("]}");
}

}  // namespace pagerd::bench
