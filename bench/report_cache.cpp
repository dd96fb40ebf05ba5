// Output of the cache cases (--cases cache): their table, and their JSON member.
#include <cstdio>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

std::string value_cell(const CacheCase& c, double v)
{
    if (v <= 0) return "-";
    return c.memory ? fmt(v / (1 << 30)) + " GiB" : fmt(v) + " GB/s";
}

std::string met_cell(const CacheCase& c)
{
    if (!c.skipped.empty()) return "skipped";
    if (!c.failure.empty()) return "FAILED";
    if (c.target <= 0) return "-";
    return c.met() ? "yes" : "NO";
}

}  // namespace

void print_cache_tables(const RunInfo& info)
{
    const CacheRun& run = info.cache;
    if (!info.caches) return;
    std::printf("\ncache cases (ratio = pagerd / baseline: throughput, higher is better; 3m: memory, lower is better)\n\n");
    std::vector<std::vector<std::string>> rows;
    std::vector<std::string> notes;
    int met = 0, total = 0, failed = 0, skipped = 0;
    for (const auto& c : run.cases) {
        const std::string target = c.target > 0 ? (c.memory ? "<= " : ">= ") + target_text(c.target) : "-";
        rows.push_back({c.num, c.name, c.baseline, std::to_string(c.pages) + (c.processes > 1 ? " x" + std::to_string(c.processes) : ""),
                        (c.base_bound ? "< " : "") + value_cell(c, c.base_value), value_cell(c, c.pagerd_value),
                        c.ran() ? (c.base_bound ? "> " : "") + fmt(c.ratio()) + "x" : "-",
                        target, met_cell(c)});
        if (c.target_case) {
            ++total;
            met += c.met();
            failed += !c.failure.empty();
            skipped += !c.skipped.empty();
        }
        if (!c.failure.empty()) notes.push_back(c.num + " FAILED: " + c.failure);
        if (!c.skipped.empty()) notes.push_back(c.num + " skipped: " + c.skipped);
        for (const auto& n : c.notes) notes.push_back(c.num + " " + n);
    }
    print_rows({"#", "pagerd side", "baseline", "pages", "baseline", "pagerd", "ratio", "target", "met"}, rows, 3);
    std::printf("\ncache targets met: %d of %d", met, total);
    if (failed) std::printf(" (%d FAILED)", failed);
    if (skipped) std::printf(" (%d skipped)", skipped);
    std::printf("; the group took %.0f s; load average at its start %s\n", run.seconds,
                run.load.empty() ? "n/a" : run.load.c_str());
    for (const auto& c : run.cases)
        if (c.target_case) std::printf("%-3s %s\n", c.num.c_str(), c.title.c_str());
    for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
    for (const auto& d : run.daemons) std::printf("cache daemon: %s\n", d.c_str());
}

void print_cache_json(const RunInfo& info)
{
    if (!info.caches) return;
    const CacheRun& run = info.cache;
    std::printf(",\"cache_seconds\":%s,\"cache_load_average\":%s,\"cache_cases\":[", json_number(run.seconds).c_str(),
                json_string(run.load).c_str());
    for (std::size_t i = 0; i < run.cases.size(); ++i) {
        const auto& c = run.cases[i];
        const char* unit = c.memory ? "bytes" : "gbps";
        std::printf("%s{\"num\":%s,\"id\":%s,\"name\":%s,\"baseline\":%s,\"title\":%s,\"target_case\":%s,"
                    "\"unit\":\"%s\",\"pages\":%llu,\"processes\":%u,\"baseline_value\":%s,\"pagerd_value\":%s,"
                    "\"ratio\":%s,\"baseline_is_upper_bound\":%s,\"target\":%s,\"target_is_max\":%s,\"met\":%s,\"failure\":%s,\"skipped\":%s,"
                    "\"notes\":[",
                    i ? "," : "", json_string(c.num).c_str(), json_string(c.id).c_str(), json_string(c.name).c_str(),
                    json_string(c.baseline).c_str(), json_string(c.title).c_str(), c.target_case ? "true" : "false",
                    unit, static_cast<unsigned long long>(c.pages), c.processes, json_number(c.base_value).c_str(),
                    json_number(c.pagerd_value).c_str(), json_number(c.ratio()).c_str(), c.base_bound ? "true" : "false", json_number(c.target).c_str(),
                    c.memory ? "true" : "false",
                    c.target > 0 && c.skipped.empty() && c.failure.empty() ? (c.met() ? "true" : "false") : "null",
                    c.failure.empty() ? "null" : json_string(c.failure).c_str(),
                    c.skipped.empty() ? "null" : json_string(c.skipped).c_str());
        for (std::size_t k = 0; k < c.notes.size(); ++k) std::printf("%s%s", k ? "," : "", json_string(c.notes[k]).c_str());
        std::printf("],\"figures\":{");
        for (std::size_t k = 0; k < c.figures.size(); ++k)
            std::printf("%s%s:%s", k ? "," : "", json_string(c.figures[k].first).c_str(),
                        c.figures[k].second == c.figures[k].second && c.figures[k].second >= 0
                            ? json_number(c.figures[k].second).c_str()
                            : "null");
        std::printf("}}");
    }
    std::printf("],\"cache_daemons\":[");
    for (std::size_t i = 0; i < run.daemons.size(); ++i)
        std::printf("%s%s", i ? "," : "", json_string(run.daemons[i]).c_str());
    std::printf("]");
}

}  // namespace pagerd::bench
