// --plot: one PNG with two panels, drawn by gnuplot run as a child process on a script
// written to a temporary file: the GB/s of both sides of every read case (grouped bars,
// log scale, ratio / target / met above each group), and the pagerd side's fault latency
// p50/p99 (log scale). The helpers here also serve plot_cache.cpp (the cache cases).
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "bench.hpp"

extern char** environ;

namespace pagerd::bench {

// A gnuplot double-quoted string.
std::string gnuplot_quoted(const std::string& s)
{
    std::string out = "\"";
    for (const char c : s) {
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string gnuplot_num(double v)
{
    if (!(v > 0) || !std::isfinite(v)) return "NaN";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

std::pair<double, double> gnuplot_log_range(const std::vector<double>& v, double headroom)
{
    double lo = 0, hi = 0;
    for (const double x : v)
        if (x > 0 && std::isfinite(x)) {
            lo = lo > 0 ? std::min(lo, x) : x;
            hi = std::max(hi, x);
        }
    if (hi <= 0) return {0.1, 10};
    return {std::pow(10.0, std::floor(std::log10(lo / 2))), std::pow(10.0, std::ceil(std::log10(hi * headroom)))};
}

namespace {

std::string describe_status(int status)
{
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("was killed by signal ") + ::strsignal(WTERMSIG(status));
    return "stopped";
}

}  // namespace

std::string gnuplot_terminal(int width, int height, const std::string& png)
{
    const std::string size = std::to_string(width) + "," + std::to_string(height);
    return "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
           "  set terminal pngcairo noenhanced size " + size + " font \"Sans,11\"\n"
           "} else {\n"
           "  set terminal png noenhanced size " + size + " font \"Sans,10\"\n"
           "}\n"
           "set output " + gnuplot_quoted(png) + "\n"
           "set encoding utf8\n";
}

Result<std::string> find_gnuplot()
{
    const char* path = std::getenv("PATH");
    std::string rest = path ? path : "/usr/bin:/bin";
    while (!rest.empty()) {
        const std::size_t colon = rest.find(':');
        const std::string d = rest.substr(0, colon);
        rest = colon == std::string::npos ? "" : rest.substr(colon + 1);
        const std::string exe = (d.empty() ? "." : d) + "/gnuplot";
        if (::access(exe.c_str(), X_OK) == 0) return exe;
    }
    return Error::system(ENOENT, "--plot needs gnuplot, which is not installed (not on $PATH): install it, e.g. "
                                 "`apt-get install gnuplot-nox` (scripts/install-deps.sh does), or leave out --plot");
}

Result<void> write_plot(const std::string& gnuplot, const std::string& png, const RunInfo& info,
                        const std::vector<CaseResult>& all)
{
    // The cases of the table of targets; the extra ones when only those ran.
    std::vector<const CaseResult*> cases;
    for (const auto& c : all)
        if (c.target_case) cases.push_back(&c);
    if (cases.empty())
        for (const auto& c : all) cases.push_back(&c);
    if (cases.empty()) return Error::system(EINVAL, "no read case to draw");
    const bool targets = cases.front()->target_case;

    std::ostringstream sc;
    const int n = static_cast<int>(cases.size());
    std::vector<double> rates, lat;
    sc << "$data << EOD\n# i baseline_gbps pagerd_gbps p50_us p99_us\n";
    for (int i = 0; i < n; ++i) {
        const CaseResult& c = *cases[static_cast<std::size_t>(i)];
        const double b = c.ran() ? gbps(c.base_seconds, c.pages) : -1;
        const double p = c.ran() ? gbps(c.pagerd_seconds, c.pages) : -1;
        const double p50 = c.ran() && c.p50_ns > 0 ? c.p50_ns / 1e3 : -1;
        const double p99 = c.ran() && c.p99_ns > 0 ? c.p99_ns / 1e3 : -1;
        rates.insert(rates.end(), {b, p});
        lat.insert(lat.end(), {p50, p99});
        sc << i << ' ' << gnuplot_num(b) << ' ' << gnuplot_num(p) << ' ' << gnuplot_num(p50) << ' '
           << gnuplot_num(p99) << '\n';
    }
    sc << "EOD\n\n";

    const auto [rlo, rhi] = gnuplot_log_range(rates, 30);
    const auto [llo, lhi] = gnuplot_log_range(lat, 4);
    const int width = std::max(1100, 250 * n + 200);
    sc << gnuplot_terminal(width, 1100, png);
    char head[512];
    std::snprintf(head, sizeof head, "pagerd-bench: %.0f MiB file, %llu random pages, median of %u run%s; kernel %s, %ld CPUs, %s",
                  static_cast<double>(info.file_bytes) / (1 << 20),
                  static_cast<unsigned long long>(info.random_pages), info.repeat, info.repeat == 1 ? "" : "s",
                  info.kernel.c_str(), info.cpus, info.date.c_str());
    sc << "set multiplot layout 2,1 title " << gnuplot_quoted(head) << " font \",14\"\n";

    // x axis: one group per case.
    std::string xt = "set xtics (";
    for (int i = 0; i < n; ++i) {
        const CaseResult& c = *cases[static_cast<std::size_t>(i)];
        const std::string num_label = c.target_case ? std::to_string(i + 1) : "x" + std::to_string(i + 1);
        xt += (i ? ", " : "") + gnuplot_quoted(num_label + ". " + c.name + "\nvs " + c.baseline) + " " + std::to_string(i);
    }
    xt += ") scale 0 font \",10\"\n";
    sc << "set xrange [-0.6:" << n - 0.4 << "]\n" << xt
       << "set logscale y 10\n"
       << "set grid ytics mytics lc rgb \"#dddddd\"\n"
       << "set style fill solid 0.85 border rgb \"#333333\"\n"
       << "set boxwidth 0.36\n"
       << "set key above horizontal box\n"
       << "set bmargin 4.5\n"
       << "set lmargin 12\n";

    // Panel 1: throughput.
    sc << "set title "
       << gnuplot_quoted(std::string("Throughput of the first touches (GB/s, higher is better)") +
                         (targets ? ": above each case, pagerd / baseline ratio, the target, and whether it was met"
                                  : ": above each case, pagerd / baseline ratio"))
       << "\n"
       << "set ylabel \"GB/s (4 KiB x pages / wall time, log scale)\"\n"
       << "set yrange [" << gnuplot_num(rlo) << ":" << gnuplot_num(rhi) << "]\n"
       << "set format y \"%g\"\n";
    for (int i = 0; i < n; ++i) {
        const CaseResult& c = *cases[static_cast<std::size_t>(i)];
        std::string text, color = "#333333";
        const double y = rhi / 4;  // one row of labels above the tallest bar
        if (!c.skipped.empty()) {
            text = "skipped";
        } else if (!c.failure.empty()) {
            text = "FAILED\n(see output)";
            color = "#c00000";
        } else {
            text = fmt(c.ratio()) + "x";
            if (c.target > 0) {
                text += "\ntarget >= " + target_text(c.target) + "\n" + (c.met() ? "met" : "NOT met");
                color = c.met() ? "#1a7f1a" : "#c00000";
            }
        }
        sc << "set label " << i + 1 << " " << gnuplot_quoted(text) << " at " << i << "," << gnuplot_num(y)
           << " center front textcolor rgb \"" << color << "\" font \",10\"\n";
    }
    sc << "plot $data using ($1-0.19):2 with boxes lc rgb \"#9e9e9e\" title \"baseline\", \\\n"
       << "     $data using ($1+0.19):3 with boxes lc rgb \"#1f77b4\" title \"pagerd\"\n"
       << "unset label\n";

    // Panel 2: fault latency.
    sc << "set title \"Fault latency of the pagerd side (the daemon's figures for the case's region; lower is "
          "better; no bar: no faults or no figures)\"\n"
       << "set ylabel \"µs (log scale)\"\n"
       << "set yrange [" << gnuplot_num(llo) << ":" << gnuplot_num(lhi) << "]\n";
    for (int i = 0; i < n; ++i) {
        const CaseResult& c = *cases[static_cast<std::size_t>(i)];
        if (c.ran() && c.p50_ns > 0) continue;
        const std::string text = !c.skipped.empty()                        ? "skipped"
                                 : !c.failure.empty()                      ? "FAILED"
                                 : c.have_region && c.region_faults == 0   ? "0 faults"
                                                                           : "no figures";
        sc << "set label " << i + 1 << " " << gnuplot_quoted(text) << " at " << i << "," << gnuplot_num(llo * 1.5)
           << " center front font \",10\"\n";
    }
    sc << "plot $data using ($1-0.19):4 with boxes lc rgb \"#f2a541\" title \"p50\", \\\n"
       << "     $data using ($1+0.19):5 with boxes lc rgb \"#c0392b\" title \"p99\"\n"
       << "unset multiplot\n"
       << "set output\n";

    return run_gnuplot(gnuplot, sc.str(), png);
}

Result<void> run_gnuplot(const std::string& gnuplot, const std::string& text, const std::string& png)
{
    char script[] = "/tmp/pagerd-bench-plot.XXXXXX";
    const int sfd = ::mkstemp(script);
    if (sfd < 0) return Error::system(errno, std::string("mkstemp for the gnuplot script: ") + std::strerror(errno));
    std::size_t done = 0;
    while (done < text.size()) {
        const ssize_t w = ::write(sfd, text.data() + done, text.size() - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            const int e = errno;
            ::close(sfd);
            ::unlink(script);
            return Error::system(e, std::string("writing the gnuplot script: ") + std::strerror(e));
        }
        done += static_cast<std::size_t>(w);
    }
    ::close(sfd);

    // gnuplot's stdout goes to stderr: stdout may carry --json.
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    std::string exe = gnuplot;
    std::vector<char*> argv = {exe.data(), script, nullptr};
    pid_t pid = -1;
    const int e = ::posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) {
        ::unlink(script);
        return Error::system(e, "cannot run " + gnuplot + ": " + std::strerror(e));
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        const std::string kept = std::string(script);  // kept for a look
        return Error::system(EIO, gnuplot + " " + describe_status(status) + " (its script: " + kept + ")");
    }
    ::unlink(script);
    if (::access(png.c_str(), R_OK) != 0) return Error::system(ENOENT, "gnuplot ran but " + png + " is not there");
    std::fprintf(stderr, "pagerd-bench: plot written to %s\n", png.c_str());
    return {};
}

}  // namespace pagerd::bench
