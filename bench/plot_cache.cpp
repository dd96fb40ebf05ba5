// --plot with the cache cases (--cases cache): one PNG, two panels, drawn by gnuplot
// (run_gnuplot of plot.cpp). Top: GB/s of the baseline and the pagerd side of every
// throughput row (the target rows, then the x rows), grouped bars, log scale, each bar's
// figure on it, and above each group the ratio, the target and whether it was met. Bottom:
// memory in GiB, log scale: case 3m (the daemon's cache at its peak against one copy of the
// file), the file left in the kernel's page cache after case 3's readers, and the readers'
// cgroup peaks of cases 1 and 2.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "bench.hpp"

namespace pagerd::bench {
namespace {

constexpr double k_gib = 1024.0 * 1024 * 1024;
constexpr const char* k_grey = "#333333";
constexpr const char* k_red = "#c00000";
constexpr const char* k_green = "#1a7f1a";

// One group of two bars (baseline, pagerd) and the text above it.
struct Bars {
    std::string tic;
    double base = -1, pagerd = -1;  // in the panel's unit; 0 is drawn as a "0" label, < 0 not at all
    std::string above;
    std::string color = k_grey;
};

double figure(const CacheCase& c, const std::string& name)
{
    for (const auto& [k, v] : c.figures)
        if (k == name) return v == v ? v : -1;
    return -1;
}

const CacheCase* find_case(const CacheRun& run, const std::string& num)
{
    for (const auto& c : run.cases)
        if (c.num == num) return &c;
    return nullptr;
}

// Skipped, FAILED, or the ratio with the target and whether it was met.
void describe(const CacheCase& c, Bars& b)
{
    if (!c.skipped.empty()) {
        b.above = "skipped";
    } else if (!c.failure.empty()) {
        b.above = "FAILED\n(see output)";
        b.color = k_red;
    } else if (!c.ran()) {
        b.above = "no figures";
    } else {
        b.above = (c.base_bound ? "> " : "") + fmt(c.ratio()) + "x";
        if (c.base_bound) b.above += "\nbaseline stopped:\nits bar is an upper bound";
        if (c.target > 0) {
            b.above += std::string("\ntarget ") + (c.memory ? "<= " : ">= ") + target_text(c.target) + "\n" +
                       (c.met() ? "met" : "NOT met");
            b.color = c.met() ? k_green : k_red;
        }
    }
}

// A memory group from two figures (bytes) of a case, or from the case's failure.
Bars memory_bars(const CacheCase& c, const std::string& tic, double base_bytes, double pagerd_bytes)
{
    Bars b;
    b.tic = tic;
    if (!c.skipped.empty() || !c.failure.empty()) {
        describe(c, b);
        return b;
    }
    b.base = base_bytes >= 0 ? base_bytes / k_gib : -1;
    b.pagerd = pagerd_bytes >= 0 ? pagerd_bytes / k_gib : -1;
    if (b.base > 0 && b.pagerd >= 0)
        b.above = fmt(b.pagerd / b.base) + "x";
    else if (b.base < 0 && b.pagerd < 0)
        b.above = "no figures";
    return b;
}

// One panel: the data block, the x tics, the labels, the plot command.
void panel(std::ostringstream& sc, const std::vector<Bars>& groups, const std::string& title,
           const std::string& ylabel)
{
    const int n = static_cast<int>(groups.size());
    std::vector<double> values;
    sc << "$data << EOD\n";
    for (int i = 0; i < n; ++i) {
        const Bars& g = groups[static_cast<std::size_t>(i)];
        values.insert(values.end(), {g.base, g.pagerd});
        sc << i << ' ' << gnuplot_num(g.base) << ' ' << gnuplot_num(g.pagerd) << '\n';
    }
    sc << "EOD\n";
    const auto [lo, hi] = gnuplot_log_range(values, 20);
    std::string xt = "set xtics (";
    for (int i = 0; i < n; ++i)
        xt += (i ? ", " : "") + gnuplot_quoted(groups[static_cast<std::size_t>(i)].tic) + " " + std::to_string(i);
    sc << xt << ") scale 0 font \",9\"\n"
       << "set xrange [-0.6:" << n - 0.4 << "]\n"
       << "set title " << gnuplot_quoted(title) << "\n"
       << "set ylabel " << gnuplot_quoted(ylabel) << "\n"
       << "set yrange [" << gnuplot_num(lo) << ":" << gnuplot_num(hi) << "]\n";
    int label = 1;
    for (int i = 0; i < n; ++i) {
        const Bars& g = groups[static_cast<std::size_t>(i)];
        if (!g.above.empty())
            sc << "set label " << label++ << " " << gnuplot_quoted(g.above) << " at " << i << "," << gnuplot_num(hi / 6)
               << " center front textcolor rgb \"" << g.color << "\" font \",9\"\n";
        // A zero has no bar on a log axis: its figure stands at the bottom.
        for (const auto& [v, dx] : {std::pair{g.base, -0.19}, std::pair{g.pagerd, 0.19}})
            if (v == 0)
                sc << "set label " << label++ << " \"0\" at " << i + dx << "," << gnuplot_num(lo * 1.6)
                   << " center front font \",8\"\n";
    }
    const std::string fig = "(sprintf(\"%.3g\", $";
    sc << "plot $data using ($1-0.19):2 with boxes lc rgb \"#9e9e9e\" title \"baseline\", \\\n"
       << "     $data using ($1+0.19):3 with boxes lc rgb \"#1f77b4\" title \"pagerd\", \\\n"
       << "     $data using ($1-0.19):2:" << fig << "2)) with labels offset 0,0.6 font \",8\" notitle, \\\n"
       << "     $data using ($1+0.19):3:" << fig << "3)) with labels offset 0,0.6 font \",8\" notitle\n"
       << "unset label\n";
}

}  // namespace

std::string cache_plot_path(const std::string& plot, bool reads_ran)
{
    if (!reads_ran) return plot;
    const std::size_t slash = plot.rfind('/');
    const std::size_t base = slash == std::string::npos ? 0 : slash + 1;
    std::string stem = plot;
    if (stem.size() >= base + 5 && stem.compare(stem.size() - 4, 4, ".png") == 0) stem.resize(stem.size() - 4);
    return stem + "-cache.png";
}

Result<void> write_cache_plot(const std::string& gnuplot, const std::string& png, const RunInfo& info)
{
    const CacheRun& run = info.cache;
    std::vector<Bars> rates, memory;
    for (const auto& c : run.cases) {
        if (c.memory) continue;
        Bars b;
        b.tic = c.num + ". " + c.name + "\nvs " + c.baseline;
        if (const std::size_t colon = b.tic.find("vs best: "); colon != std::string::npos)
            b.tic.replace(colon, 9, "vs the best of x2-x5:\n");
        b.base = c.base_value;
        b.pagerd = c.pagerd_value;
        describe(c, b);
        rates.push_back(b);
    }
    if (const CacheCase* c = find_case(run, "3m")) {
        Bars b;
        b.tic = "3m. " + c->name + "\nvs " + c->baseline;
        b.base = c->ran() ? c->base_value / k_gib : -1;
        b.pagerd = c->ran() ? c->pagerd_value / k_gib : -1;
        describe(*c, b);
        memory.push_back(b);
        const double file = c->ran() ? c->base_value : -1;
        const double fb = figure(*c, "kernel_page_cache_fraction_after_mmap");
        const double fp = figure(*c, "kernel_page_cache_fraction_after_pagerd");
        memory.push_back(memory_bars(*c, "3. the file in the kernel's\npage cache after the 4 readers",
                                     file > 0 && fb >= 0 ? fb * file : -1, file > 0 && fp >= 0 ? fp * file : -1));
    }
    for (const char* num : {"1", "2"})
        if (const CacheCase* c = find_case(run, num))
            memory.push_back(memory_bars(*c, std::string(num) + ". the reader's cgroup\nat its peak (limit 256 MiB)",
                                         figure(*c, "baseline_cgroup_peak_bytes"),
                                         figure(*c, "pagerd_cgroup_peak_bytes")));
    if (rates.empty() && memory.empty()) return Error::system(EINVAL, "no cache case to draw");

    std::ostringstream sc;
    const int width = std::max(1300, 200 * static_cast<int>(rates.size()) + 250);
    sc << gnuplot_terminal(width, 1250, png);
    char head[512];
    std::snprintf(head, sizeof head,
                  "pagerd-bench --cases cache: %.0f MiB file, one run; kernel %s, %ld CPUs, %s; load average at the "
                  "start %s",
                  static_cast<double>(info.file_bytes) / (1 << 20), info.kernel.c_str(), info.cpus, info.date.c_str(),
                  run.load.empty() ? "n/a" : run.load.c_str());
    sc << "set multiplot title " << gnuplot_quoted(head) << " font \",13\"\n"
       << "set logscale y 10\n"
       << "set format y \"%g\"\n"
       << "set grid ytics mytics lc rgb \"#dddddd\"\n"
       << "set style fill solid 0.85 border rgb \"#333333\"\n"
       << "set boxwidth 0.36\n"
       << "set key above horizontal box\n"
       << "set bmargin 5.5\n"
       << "set lmargin 12\n";
    if (!rates.empty()) {
        sc << "set origin 0,0.42\nset size 1,0.54\n";
        panel(sc, rates,
              "Throughput (GB/s, higher is better): above each case, pagerd / baseline, the target and whether it "
              "was met (x rows: no target)",
              "GB/s (4 KiB x reads / wall time, log scale)");
    }
    if (!memory.empty()) {
        sc << "set origin 0,0\nset size " << (rates.empty() ? "1,0.96" : "0.62,0.42") << "\n";
        panel(sc, memory, "Memory (GiB, lower is better): above each group, pagerd / baseline",
              "GiB (log scale)");
    }
    // The run's own words, next to the memory panel.
    std::string notes = "Bars of 3 (kernel's page cache): left after\nthe 4 mmap readers, right after the 4 pagerd readers.";
    notes += "\nBars of 1 and 2: the reader's memory cgroup\n(mmap reader left, pagerd reader right).";
    notes += "\nx2-x5: the kernel paths case 5 takes the best of.";
    char line[160];
    std::snprintf(line, sizeof line, "\n\nThe group took %.0f s.", run.seconds);
    notes += line;
    for (const auto& d : run.daemons) {  // "/path/pagerd ARGS (peak RSS X)"
        const std::size_t space = d.find(' ');
        const std::size_t slash = d.rfind('/', space);
        notes += "\n" + d.substr(slash == std::string::npos || slash > space ? 0 : slash + 1);
    }
    if (!rates.empty() && !memory.empty())
        sc << "set label 1 " << gnuplot_quoted(notes) << " at screen 0.64,0.34 left front font \",10\"\n"
           << "unset xtics\nunset ytics\nunset border\nunset title\nunset ylabel\nunset key\nunset grid\n"
           << "unset logscale y\nset origin 0.62,0\nset size 0.38,0.42\nset xrange [0:1]\nset yrange [0:1]\n"
           << "plot NaN notitle\n";
    sc << "unset multiplot\nset output\n";
    return run_gnuplot(gnuplot, sc.str(), png);
}

}  // namespace pagerd::bench
