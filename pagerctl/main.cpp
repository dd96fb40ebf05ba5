// pagerctl: a command-line client of pagerd, for people and scripts.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "commands.hpp"

namespace pagerd::pagerctl {

int report(const Error& e)
{
    std::fprintf(stderr, "pagerctl: %s\n", e.message.c_str());
    return 1;
}

}  // namespace pagerd::pagerctl

int main(int argc, char** argv)
{
    using namespace pagerd::pagerctl;
    CLI::App app{"pagerctl: talk to pagerd"};
    app.require_subcommand(1);
    std::string socket;
    app.add_option("--socket", socket, "pagerd socket (default: $PAGERD_SOCKET, else /run/pagerd/pagerd.sock)");

    bool json = false;
    auto* status = app.add_subcommand(
        "status", "Daemon version, uptime, clients, regions, faults, latency, page caches, stores");
    status->add_flag("--json", json, "One JSON object");

    CatOptions cat;
    std::string pattern = "seq";
    auto* catcmd = app.add_subcommand(
        "cat", "Map FILE or a store URI through pagerd, touch every page, write the bytes to stdout");
    catcmd->add_option("FILE", cat.file,
                       "File to map, or a store the daemon reaches itself: nbd://HOST[:PORT]/EXPORT, "
                       "nbd+unix:///EXPORT?socket=PATH (nbds://, nbds+unix://: TLS), which the daemon's "
                       "--allow-store must allow, or zero:SIZE (zeros; SIZE in bytes or with K, M, G, T). "
                       "A file named like a URI: ./NAME")
        ->required();
    catcmd->add_option("--offset", cat.offset, "First byte");
    catcmd->add_option("--length", cat.length,
                       "Bytes (default: to the end of the file or store; an NBD export's size is asked of "
                       "the daemon after mapping its first page)");
    catcmd->add_option("--pattern", pattern, "Order of first touches")->check(CLI::IsMember({"seq", "random"}));
    catcmd->add_option("--threads", cat.threads, "Touching threads")->check(CLI::Range(1u, 1024u));
    std::string prefetch = "sequential";
    catcmd
        ->add_option("--prefetch", prefetch,
                     "What the daemon loads besides the faulting pages: sequential (read-ahead, the default), "
                     "none, or all (the whole region in the background)")
        ->check(
            [](const std::string& v) -> std::string {
                if (pagerd::libclient::parse_prefetch(v)) return {};
                return "unknown prefetch policy \"" + v + "\" (expected sequential, none or all)";
            },
            "sequential|none|all");

    WriteOptions wr;
    auto* writecmd = app.add_subcommand("write", "Map FILE shared through pagerd, copy stdin into it at --offset, flush");
    writecmd->add_option("FILE", wr.file, "File to write (must be long enough: a mapping cannot grow it)")->required();
    writecmd->add_option("--offset", wr.offset, "Where stdin's bytes go")->required();
    writecmd->add_option("--tracking", wr.tracking, "How writes are noticed")
        ->check(CLI::IsMember({"auto", "uffd-wp", "sigsegv", "async"}));

    CLI11_PARSE(app, argc, argv);
    if (status->parsed()) return run_status(socket, json);
    if (writecmd->parsed()) return run_write(socket, wr);
    cat.random = pattern == "random";
    cat.prefetch = *pagerd::libclient::parse_prefetch(prefetch);  // checked above
    return run_cat(socket, cat);
}
