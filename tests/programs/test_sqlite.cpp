// sqlite3 (Debian's command-line shell, unmodified) under pagerd-run on a database of 400000
// rows built without pagerd, with PRAGMA mmap_size larger than the database: a query's result
// equals the one without pagerd-run. Opened read-only (-readonly, or a file:...?mode=ro URI:
// O_RDONLY) the database file is taken and its pages come through the daemon; opened in write mode (O_RDWR, then mapped
// PROT_READ: SQLite writes with write(2) and reads its own mapping) the preload library must
// fall back to the kernel's mmap, as the coherence rule says.
#include <catch2/catch.hpp>

#include "programs.hpp"

using namespace pagerd;
using namespace pagerd::test;
using namespace pagerd::test::programs;

namespace {

const std::string k_sqlite = "/usr/bin/sqlite3";

const std::string k_query =
    "PRAGMA mmap_size=1073741824; "
    "SELECT g, count(*), sum(k), total(v), min(s), max(s) FROM t GROUP BY g ORDER BY g; "
    "SELECT count(*), sum(length(s)), sum(k % 1000) FROM t WHERE s LIKE '%7%';";

// A database of 400000 rows (about 30 MiB), made without pagerd.
std::uint64_t make_db(const std::string& db, const std::vector<std::string>& env)
{
    run_ok({k_sqlite, db,
            "PRAGMA page_size=4096; CREATE TABLE t(k INTEGER PRIMARY KEY, g INTEGER, v REAL, s TEXT); "
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) "
            "INSERT INTO t SELECT x, x % 97, x * 0.25, printf('%08x-%040d', (x * 2654435761) % 4294967296, x * x) FROM c;"},
           env);
    const std::uint64_t size = file_id(db).size;
    REQUIRE(size >= (24ull << 20));
    return size;
}

}  // namespace

TEST_CASE("sqlite3 on a read-only database with mmap_size answers through pagerd as without it", "[programs][sqlite]")
{
    TempDir dir;
    const auto env = quiet_env(dir.path());
    const std::string db = dir.file("rows.db");
    const std::uint64_t size = make_db(db, env);
    const std::vector<std::string> prog{k_sqlite, "-readonly", "-batch", db, k_query};
    const auto plain = run_ok(prog, env);
    REQUIRE(lines(plain.out).size() == 1 + 97 + 1);

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const auto r = run_ok(under_pagerd(daemon, {}, prog), env);
    INFO("stderr under pagerd-run: " << r.err);
    CHECK(r.out == plain.out);
    CHECK(without_debug(r.err) == plain.err);
    CHECK(taken(r.err, db));
    const auto after = settle(*conn, 1, 0);
    CHECK(after.clients == 1);
    CHECK(after.regions == 0);
    CHECK(after.faults > before.faults);
    CHECK(loaded_bytes(after) - loaded_bytes(before) >= size * 9 / 10);

    // Opened read-only through a URI (file:...?mode=ro): O_RDONLY too, taken too.
    const std::vector<std::string> uri{k_sqlite, "-batch", "file:" + db + "?mode=ro", k_query};
    const auto plain_uri = run_ok(uri, env);
    CHECK(plain_uri.out == plain.out);
    const auto u = run_ok(under_pagerd(daemon, {}, uri), env);
    INFO("stderr under pagerd-run, URI: " << u.err);
    CHECK(u.out == plain.out);
    CHECK(without_debug(u.err) == plain_uri.err);
    CHECK(taken(u.err, db));
    const auto last = settle(*conn, 1, 0);
    CHECK(last.regions == 0);
    CHECK(last.faults > after.faults);
}

TEST_CASE("sqlite3 in write mode maps a descriptor open for writing and the preload library falls back", "[programs][sqlite]")
{
    TempDir dir;
    const auto env = quiet_env(dir.path());
    const std::string db = dir.file("rows.db");
    make_db(db, env);
    const std::vector<std::string> prog{k_sqlite, "-batch", db, k_query};
    const auto plain = run_ok(prog, env);
    REQUIRE(lines(plain.out).size() == 1 + 97 + 1);

    Daemon daemon;
    auto conn = daemon.connect();
    const auto before = settle(*conn, 1, 0);
    const auto r = run_ok(under_pagerd(daemon, {}, prog), env);
    INFO("stderr under pagerd-run: " << r.err);
    CHECK(r.out == plain.out);
    CHECK(without_debug(r.err) == plain.err);
    CHECK(fell_back(r.err, db));
    const auto after = settle(*conn, 1, 0);
    CHECK(after.regions == 0);
    CHECK(loaded_bytes(after) == loaded_bytes(before));
}
