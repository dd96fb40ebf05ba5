// proto/PROTOCOL.md and the code agree: the tables of the document are parsed and compared
// with constants.hpp in both directions, and every documented body layout is checked
// against the bytes the encoder produces.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "pagerd/proto/codec.hpp"

using namespace pagerd::proto;

namespace {

// ---- the document ------------------------------------------------------------------

using Row = std::vector<std::string>;

// A Markdown table with the headings it sits under.
struct Table {
    std::string h2, h3;
    Row header;
    std::vector<Row> rows;
};

std::string trim(const std::string& s)
{
    const auto b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

std::string unquote(const std::string& s)
{
    const std::string t = trim(s);
    return t.size() >= 2 && t.front() == '`' && t.back() == '`' ? t.substr(1, t.size() - 2) : t;
}

Row split_row(const std::string& line)
{
    Row cells;
    std::string cell;
    for (std::size_t i = 1; i < line.size(); ++i) {  // line[0] is the leading '|'
        if (line[i] == '|') {
            cells.push_back(trim(cell));
            cell.clear();
        } else {
            cell += line[i];
        }
    }
    return cells;
}

bool is_separator(const Row& r)
{
    for (const auto& c : r)
        if (c.empty() || c.find_first_not_of("-: ") != std::string::npos) return false;
    return !r.empty();
}

std::string read_doc()
{
    std::ifstream in(PAGERD_SOURCE_DIR "/proto/PROTOCOL.md");
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::vector<Table> parse_tables(const std::string& doc)
{
    std::vector<Table> tables;
    std::istringstream in(doc);
    std::string line, h2, h3;
    bool in_table = false;
    while (std::getline(in, line)) {
        if (line.rfind("## ", 0) == 0) {
            h2 = trim(line.substr(3));
            h3.clear();
        } else if (line.rfind("### ", 0) == 0) {
            h3 = trim(line.substr(4));
        }
        if (line.empty() || line[0] != '|') {
            in_table = false;
            continue;
        }
        Row row = split_row(line);
        if (!in_table) {
            tables.push_back(Table{h2, h3, row, {}});
            in_table = true;
        } else if (!is_separator(row)) {
            tables.back().rows.push_back(std::move(row));
        }
    }
    return tables;
}

const std::vector<Table>& tables()
{
    static const std::vector<Table> t = parse_tables(read_doc());
    return t;
}

// The one table under heading `h2` whose header row is `header`.
const Table& table(const std::string& h2, const Row& header)
{
    const Table* found = nullptr;
    int n = 0;
    for (const auto& t : tables())
        if (t.h2 == h2 && t.header == header) {
            found = &t;
            ++n;
        }
    INFO("table under '## " << h2 << "' with header " << Catch::Detail::stringify(header));
    REQUIRE(n == 1);
    return *found;
}

// A whole cell as an unsigned number (decimal or 0x hex); a cell with anything else fails.
std::uint64_t number(const std::string& cell)
{
    const std::string s = unquote(cell);
    INFO("cell '" << cell << "' should be a number");
    REQUIRE_FALSE(s.empty());
    std::size_t used = 0;
    std::uint64_t v = 0;
    try {
        v = std::stoull(s, &used, 0);
    } catch (const std::exception&) {
        FAIL("not a number");
    }
    REQUIRE(used == s.size());
    return v;
}

// Rows keyed by their unquoted first cell; duplicates fail.
std::map<std::string, Row> by_name(const Table& t, std::size_t columns)
{
    std::map<std::string, Row> out;
    for (const auto& r : t.rows) {
        INFO("row " << Catch::Detail::stringify(r));
        REQUIRE(r.size() == columns);
        REQUIRE(r[0].size() > 2);
        REQUIRE(r[0].front() == '`');
        REQUIRE(out.emplace(unquote(r[0]), r).second);
    }
    return out;
}

// ---- the code ----------------------------------------------------------------------

struct Named {
    std::string name;
    std::uint64_t value;
    std::size_t fds;
};

const std::vector<Named> k_types = {
#define PAGERD_X(name, value, fds) {#name, value, fds},
    PAGERD_MESSAGE_TYPES(PAGERD_X)
#undef PAGERD_X
};
const std::vector<Named> k_errors = {
#define PAGERD_X(name, value) {#name, value, 0},
    PAGERD_ERROR_CODES(PAGERD_X)
#undef PAGERD_X
};
const std::vector<Named> k_caps = {
#define PAGERD_X(name, bit) {#name, bit, 0},
    PAGERD_CAPABILITIES(PAGERD_X)
#undef PAGERD_X
};

template <std::size_t... I>
std::map<std::string, Body> default_bodies(std::index_sequence<I...>)
{
    std::map<std::string, Body> out;
    (out.emplace(type_name(type_of(Body{std::in_place_index<I>})), Body{std::in_place_index<I>}),
     ...);
    return out;
}
const std::map<std::string, Body> k_bodies =
    default_bodies(std::make_index_sequence<std::variant_size_v<Body>>{});

// Setters for every field of every body, keyed "TYPE.field" as the document names them.
// A setter returns the value the field holds afterwards: `v` cut to the field's type
// (MapShared.tracking is a u32 on the wire but one byte in the struct).
using Setter = std::function<std::uint64_t(Body&, std::uint64_t)>;
#define NUM(TYPE, Struct, field)                                        \
    {                                                                   \
        #TYPE "." #field, [](Body& b, std::uint64_t v) -> std::uint64_t { \
            auto& m = std::get<Struct>(b);                              \
            m.field = static_cast<decltype(Struct::field)>(v);          \
            return static_cast<std::uint64_t>(m.field);                 \
        }                                                               \
    }
#define STR(TYPE, Struct, field)                                        \
    {                                                                   \
        #TYPE "." #field, [](Body& b, std::uint64_t v) -> std::uint64_t { \
            std::get<Struct>(b).field = std::string(v, 's');            \
            return v;                                                   \
        }                                                               \
    }
const std::map<std::string, Setter> k_numbers = {
    NUM(HELLO, Hello, required_caps),
    NUM(HELLO, Hello, optional_caps),
    NUM(WELCOME, Welcome, caps),
    NUM(WELCOME, Welcome, page_size),
    NUM(WELCOME, Welcome, max_regions),
    NUM(WELCOME, Welcome, max_mapped_bytes),
    NUM(REGISTER_UFFD, RegisterUffd, features),
    NUM(REGISTER_UFFD, RegisterUffd, flags),
    NUM(MAP, Map, addr),
    NUM(MAP, Map, length),
    NUM(MAP, Map, file_offset),
    NUM(MAP, Map, flags),
    NUM(MAP, Map, prefetch),
    NUM(MAPPED, Mapped, region_id),
    NUM(CACHE_MAPPED, CacheMapped, region_id),
    NUM(CACHES, CachesRequest, index),
    NUM(CACHES_REPLY, CachesReply, total),
    NUM(CACHES_REPLY, CachesReply, index),
    NUM(CACHES_REPLY, CachesReply, dev),
    NUM(CACHES_REPLY, CachesReply, ino),
    NUM(CACHES_REPLY, CachesReply, size),
    NUM(CACHES_REPLY, CachesReply, resident),
    NUM(CACHES_REPLY, CachesReply, clients),
    NUM(CACHES_REPLY, CachesReply, regions),
    NUM(CACHES_REPLY, CachesReply, dirty),
    NUM(MAP_STORE, MapStore, addr),
    NUM(MAP_STORE, MapStore, length),
    NUM(MAP_STORE, MapStore, offset),
    NUM(MAP_STORE, MapStore, flags),
    NUM(MAP_STORE, MapStore, prefetch),
    NUM(STORES, StoresRequest, index),
    NUM(STORES_REPLY, StoresReply, total),
    NUM(STORES_REPLY, StoresReply, index),
    NUM(STORES_REPLY, StoresReply, size),
    NUM(STORES_REPLY, StoresReply, connections),
    NUM(STORES_REPLY, StoresReply, inflight),
    NUM(STORES_REPLY, StoresReply, reads),
    NUM(STORES_REPLY, StoresReply, read_bytes),
    NUM(STORES_REPLY, StoresReply, read_errors),
    NUM(STORES_REPLY, StoresReply, retries),
    NUM(STORES_REPLY, StoresReply, timeouts),
    NUM(STORES_REPLY, StoresReply, reconnects),
    NUM(STORES_REPLY, StoresReply, writes),
    NUM(STORES_REPLY, StoresReply, write_bytes),
    NUM(STORES_REPLY, StoresReply, write_errors),
    NUM(STORES_REPLY, StoresReply, read_latency_avg_ns),
    NUM(STORES_REPLY, StoresReply, read_latency_max_ns),
    NUM(UNMAP, Unmap, region_id),
    NUM(STATUS_REPLY, StatusReply, uptime_ms),
    NUM(STATUS_REPLY, StatusReply, workers),
    NUM(STATUS_REPLY, StatusReply, clients),
    NUM(STATUS_REPLY, StatusReply, regions),
    NUM(STATUS_REPLY, StatusReply, mapped_bytes),
    NUM(STATUS_REPLY, StatusReply, faults),
    NUM(STATUS_REPLY, StatusReply, pages_installed),
    NUM(STATUS_REPLY, StatusReply, bytes_read),
    NUM(STATUS_REPLY, StatusReply, sigbus_faults),
    NUM(STATUS_REPLY, StatusReply, latency_p50_ns),
    NUM(STATUS_REPLY, StatusReply, latency_p99_ns),
    NUM(STATUS_REPLY, StatusReply, latency_max_ns),
    NUM(STATUS_REPLY, StatusReply, user_mode_only_clients),
    NUM(STATUS_REPLY, StatusReply, requester_flags),
    NUM(STATUS_REPLY, StatusReply, requester_regions),
    NUM(STATUS_REPLY, StatusReply, pages_prefetched),
    NUM(STATUS_REPLY, StatusReply, cache_budget),
    NUM(STATUS_REPLY, StatusReply, cache_bytes),
    NUM(STATUS_REPLY, StatusReply, cache_files),
    NUM(STATUS_REPLY, StatusReply, cache_loads),
    NUM(STATUS_REPLY, StatusReply, cache_hits),
    NUM(STATUS_REPLY, StatusReply, cache_evictions),
    NUM(STATUS_REPLY, StatusReply, cache_refaults),
    NUM(STATUS_REPLY, StatusReply, cache_dirty_bytes),
    NUM(STATUS_REPLY, StatusReply, cache_writebacks),
    NUM(PING, Ping, nonce),
    NUM(PONG, Pong, nonce),
    NUM(ERROR, ErrorReply, code),
    NUM(SHARED_MAP, MapShared, addr),
    NUM(SHARED_MAP, MapShared, length),
    NUM(SHARED_MAP, MapShared, file_offset),
    NUM(SHARED_MAP, MapShared, tracking),
    NUM(SHARED_MAP, MapShared, prefetch),
    NUM(FLUSH, Flush, region_id),
    NUM(FLUSHED, Flushed, pages),
    NUM(FLUSHED, Flushed, bytes),
    NUM(REGIONS, RegionsRequest, first),
    NUM(REGIONS_REPLY, RegionsReply, total),
    NUM(REGIONS_REPLY, RegionsReply, first),
    NUM(PREFETCH, PrefetchRequest, addr),
    NUM(PREFETCH, PrefetchRequest, length),
    NUM(PREFETCH, PrefetchRequest, flags),
    // The entry count is the size of the vector, at most what the encoder sends.
    {"REGIONS_REPLY.count",
     [](Body& b, std::uint64_t v) -> std::uint64_t {
         auto& m = std::get<RegionsReply>(b);
         m.entries.resize(std::min<std::uint64_t>(v, k_max_region_entries));
         return m.entries.size();
     }},
};
const std::map<std::string, Setter> k_strings = {
    STR(HELLO, Hello, name),
    STR(WELCOME, Welcome, version),
    STR(STATUS_REPLY, StatusReply, version),
    STR(ERROR, ErrorReply, text),
    STR(MAP_STORE, MapStore, uri),
    STR(STORES_REPLY, StoresReply, kind),
    STR(STORES_REPLY, StoresReply, uri),
};

// Setters for the elements of fixed-size arrays of numbers ("N × uB" in a layout), keyed
// "TYPE.field": element i set to v, returning what it holds afterwards.
struct FixedArray {
    std::size_t count;
    std::function<std::uint64_t(Body&, std::size_t, std::uint64_t)> set;
};
#define FIXED(TYPE, Struct, field)                                                        \
    {                                                                                     \
        #TYPE "." #field,                                                                 \
            FixedArray{std::tuple_size_v<decltype(Struct::field)>,                        \
                       [](Body& b, std::size_t i, std::uint64_t v) -> std::uint64_t {     \
                           auto& a = std::get<Struct>(b).field;                          \
                           a.at(i) = static_cast<typename decltype(Struct::field)::value_type>(v); \
                           return static_cast<std::uint64_t>(a.at(i));                   \
                       }}                                                                 \
    }
const std::map<std::string, FixedArray> k_fixed_arrays = {
    FIXED(STATUS_REPLY, StatusReply, latency_histogram),
};
#undef FIXED
#undef NUM
#undef STR

// The array a body ends with: REGIONS_REPLY.entries, keyed by type name.
struct Array {
    std::string field;
    std::function<void(Body&, std::size_t)> resize;
    std::function<RegionEntry&(Body&, std::size_t)> at;
};
const std::map<std::string, Array> k_arrays = {
    {"REGIONS_REPLY",
     {"entries", [](Body& b, std::size_t n) { std::get<RegionsReply>(b).entries.resize(n); },
      [](Body& b, std::size_t i) -> RegionEntry& { return std::get<RegionsReply>(b).entries.at(i); }}},
};

// Setters for the fields of a REGIONS_REPLY entry, keyed by the document's name.
using EntrySetter = std::function<std::uint64_t(RegionEntry&, std::uint64_t)>;
#define ENTRY(field)                                                     \
    {                                                                    \
        #field, [](RegionEntry& e, std::uint64_t v) -> std::uint64_t {   \
            e.field = static_cast<decltype(RegionEntry::field)>(v);      \
            return static_cast<std::uint64_t>(e.field);                  \
        }                                                                \
    }
const std::map<std::string, EntrySetter> k_entry_fields = {
    ENTRY(client),         ENTRY(pid),           ENTRY(access),         ENTRY(tracking),
    ENTRY(prefetch),       ENTRY(region_id),     ENTRY(length),         ENTRY(dirty_pages),
    ENTRY(faults),         ENTRY(latency_p50_ns), ENTRY(latency_p99_ns), ENTRY(prefetch_pending),
};
#undef ENTRY

// The fixed-size arrays of an entry: element i set to v, returning what it holds.
struct EntryArray {
    std::size_t count;
    std::function<std::uint64_t(RegionEntry&, std::size_t, std::uint64_t)> set;
};
const std::map<std::string, EntryArray> k_entry_arrays = {
    {"latency_histogram",
     {std::tuple_size_v<decltype(RegionEntry::latency_histogram)>,
      [](RegionEntry& e, std::size_t i, std::uint64_t v) -> std::uint64_t {
          e.latency_histogram.at(i) = static_cast<std::uint32_t>(v);
          return e.latency_histogram.at(i);
      }}},
};

// ---- layouts -----------------------------------------------------------------------

const Row k_layout_header = {"field", "offset", "size", "meaning"};

struct Field {
    std::string name;
    std::size_t offset = 0;  // with every string before it empty
    std::size_t size = 0;    // for a string: 2, its count; for an array: 0
    bool string = false;
    std::string letter;                // a string's: "2 + k" is string k
    std::vector<std::string> after;    // offset "N + k + u": the strings before the field
    bool array = false;       // size "E × count": `count` elements of E bytes
    std::size_t element = 0;  // E
    // A fixed array of numbers: size in bytes, meaning "N × uB ...": N elements of B bits.
    std::size_t fixed_count = 0;  // N (0: not one)
    std::size_t fixed_element = 0;  // B / 8
};

const std::string k_times = " × ";

// An offset cell: "N", or "N + k + u" after strings "2 + k" and "2 + u".
std::pair<std::size_t, std::vector<std::string>> offset_cell(const std::string& cell)
{
    const std::string plus = " + ";
    std::vector<std::string> letters;
    std::size_t at = cell.find(plus);
    const std::string fixed = cell.substr(0, at);
    while (at != std::string::npos) {
        const std::size_t from = at + plus.size();
        at = cell.find(plus, from);
        letters.push_back(cell.substr(from, at == std::string::npos ? std::string::npos : at - from));
    }
    return {number(fixed), letters};
}

// A string's size cell "2 + n": the letter, or "" when the cell is not one.
std::string string_letter(const std::string& cell)
{
    const std::string lead = "2 + ";
    if (cell.size() != lead.size() + 1 || cell.rfind(lead, 0) != 0) return "";
    const char c = cell.back();
    return c >= 'a' && c <= 'z' ? std::string(1, c) : "";
}

// Parses a layout table and checks that its fields are contiguous from offset 0, that
// the size matches the stated type, and that an array is only ever the last field. An
// array's count is an earlier field of the table. A field after strings names them in
// its offset, in order ("12 + k + u"), each string with a letter of its own.
std::vector<Field> layout(const Table& t)
{
    std::vector<Field> out;
    std::size_t next = 0;
    std::vector<std::string> strings;  // the letters of the strings so far
    for (const auto& r : t.rows) {
        INFO("layout row " << Catch::Detail::stringify(r));
        REQUIRE(r.size() == 4);
        Field f;
        f.name = unquote(r[0]);
        std::tie(f.offset, f.after) = offset_cell(r[1]);
        CHECK(f.after == strings);
        f.letter = string_letter(r[2]);
        f.string = !f.letter.empty();
        if (f.string) {
            CHECK(std::find(strings.begin(), strings.end(), f.letter) == strings.end());
            strings.push_back(f.letter);
        }
        const auto times = r[2].find(k_times);
        f.array = times != std::string::npos;
        std::string kind;
        if (f.string) {
            f.size = 2;
            kind = "string";
        } else if (f.array) {
            f.element = number(r[2].substr(0, times));
            CHECK(f.element > 0);
            const std::string count = r[2].substr(times + k_times.size());
            bool counted = false;
            for (const auto& g : out) counted = counted || (g.name == count && !g.string);
            CHECK(counted);
            kind = "array of `" + count + "` ";
        } else {
            f.size = number(r[2]);
            kind = "u" + std::to_string(8 * f.size);
            // "N × uB": N numbers of B bits, N × B / 8 bytes in all.
            const auto n_end = r[3].find(k_times);
            if (n_end != std::string::npos && n_end > 0 &&
                r[3].find_first_not_of("0123456789") == n_end) {
                f.fixed_count = number(r[3].substr(0, n_end));
                const std::string rest = r[3].substr(n_end + k_times.size());
                REQUIRE(rest.size() > 1);
                REQUIRE(rest[0] == 'u');
                const auto bits_end = rest.find_first_not_of("0123456789", 1);
                const auto bits = number(rest.substr(1, bits_end - 1));
                CHECK((bits == 8 || bits == 16 || bits == 32 || bits == 64));
                f.fixed_element = bits / 8;
                CHECK(f.fixed_count > 1);
                CHECK(f.fixed_count * f.fixed_element == f.size);
                kind = r[3].substr(0, n_end) + k_times + "u" + std::to_string(bits);
            }
        }
        CHECK(f.offset == next);
        CHECK(r[3].rfind(kind, 0) == 0);
        if (!out.empty()) CHECK_FALSE(out.back().array);
        next = f.offset + f.size;
        out.push_back(f);
    }
    return out;
}

std::size_t fixed_size(const std::vector<Field>& fields)
{
    return fields.empty() ? 0 : fields.back().offset + fields.back().size;
}

// The body layout of a message type: the table under "### `NAME` (number)", or none.
const Table* body_table(const std::string& name, std::uint64_t value)
{
    const std::string heading = "`" + name + "` (" + std::to_string(value) + ")";
    const Table* found = nullptr;
    for (const auto& t : tables())
        if (t.h2 == "Message bodies" && t.h3 == heading) {
            REQUIRE(t.header == k_layout_header);
            REQUIRE(found == nullptr);
            found = &t;
        }
    return found;
}

std::uint64_t little_endian(const std::vector<std::uint8_t>& b, std::size_t off, std::size_t n)
{
    REQUIRE(off + n <= b.size());
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{b[off + i]} << (8 * i);
    return v;
}

std::uint64_t mask(std::size_t bytes)
{
    return bytes >= 8 ? ~std::uint64_t{0} : (std::uint64_t{1} << (8 * bytes)) - 1;
}

// A "body bytes" cell: "N", "N + string", "N + strings" or "N + E per entry".
struct BodyBytes {
    std::uint64_t fixed = 0;
    bool string = false;   // one string, the last field
    bool strings = false;  // more than one, fields after them
    std::uint64_t per_entry = 0;
};

BodyBytes body_bytes(const std::string& cell)
{
    INFO("body bytes '" << cell << "'");
    BodyBytes out;
    if (const auto plus = cell.find(" + string"); plus != std::string::npos) {
        CHECK((cell.substr(plus) == " + string" || cell.substr(plus) == " + strings"));
        out.strings = cell.substr(plus) == " + strings";
        out.string = !out.strings;
        out.fixed = number(cell.substr(0, plus));
    } else if (const auto per = cell.find(" per entry"); per != std::string::npos) {
        CHECK(cell.substr(per) == " per entry");
        const auto sum = cell.find(" + ");
        REQUIRE(sum < per);
        out.fixed = number(cell.substr(0, sum));
        out.per_entry = number(cell.substr(sum + 3, per - sum - 3));
        CHECK(out.per_entry > 0);
    } else {
        out.fixed = number(cell);
    }
    return out;
}

// The layout of one element of a type's array: the table under "### `NAME` entries".
const Table& entry_table(const std::string& name)
{
    const std::string heading = "`" + name + "` entries";
    const Table* found = nullptr;
    for (const auto& t : tables())
        if (t.h2 == "Message bodies" && t.h3 == heading) {
            REQUIRE(t.header == k_layout_header);
            REQUIRE(found == nullptr);
            found = &t;
        }
    INFO("no table under '### " << heading << "'");
    REQUIRE(found != nullptr);
    return *found;
}

}  // namespace

TEST_CASE("doc: the document names constants.hpp as its code counterpart", "[doc]")
{
    CHECK(read_doc().find("proto/include/pagerd/proto/constants.hpp") != std::string::npos);
}

TEST_CASE("doc: the constants table matches constants.hpp", "[doc]")
{
    const std::map<std::string, std::uint64_t> code = {
        {"k_magic", k_magic},
        {"k_version", k_version},
        {"k_header_size", k_header_size},
        {"k_max_message_size", k_max_message_size},
        {"k_max_fds", k_max_fds},
        {"k_max_name", k_max_name},
        {"k_max_text", k_max_text},
        {"k_max_uri", k_max_uri},
        {"k_max_region_entries", k_max_region_entries},
    };
    const std::map<std::string, std::string> code_strings = {
        {"k_default_socket_path", k_default_socket_path},
    };
    const auto doc = by_name(table("Constants", {"name", "value", "meaning"}), 3);
    for (const auto& [name, value] : code) {
        INFO(name);
        REQUIRE(doc.count(name) == 1);
        CHECK(number(doc.at(name)[1]) == value);
    }
    for (const auto& [name, value] : code_strings) {
        INFO(name);
        REQUIRE(doc.count(name) == 1);
        CHECK(unquote(doc.at(name)[1]) == value);
    }
    for (const auto& [name, row] : doc) {
        INFO("documented constant " << name);
        CHECK(code.count(name) + code_strings.count(name) == 1);
    }
    CHECK(doc.at("k_magic")[1] == "`0x44524750`");
    CHECK(doc.at("k_magic")[2].find("PGRD") != std::string::npos);
}

TEST_CASE("doc: the message type table matches PAGERD_MESSAGE_TYPES", "[doc]")
{
    const auto doc =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    for (const auto& t : k_types) {
        INFO(t.name);
        REQUIRE(doc.count(t.name) == 1);
        const auto& row = doc.at(t.name);
        CHECK(number(row[1]) == t.value);
        CHECK(number(row[3]) == t.fds);
        CHECK((row[2] == "client → daemon" || row[2] == "daemon → client"));
    }
    for (const auto& [name, row] : doc) {
        INFO("documented type " << name << " = " << row[1]);
        bool known = false;
        for (const auto& t : k_types) known = known || t.name == name;
        CHECK(known);
    }
    CHECK(doc.size() == k_types.size());
}

TEST_CASE("doc: requests and replies agree with the directions", "[doc]")
{
    const auto types =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    const auto& pairs = table("Message types", {"request", "success reply", "needs"});
    std::set<std::string> requests, replies{"ERROR"};
    for (const auto& r : pairs.rows) {
        REQUIRE(r.size() == 3);
        requests.insert(unquote(r[0]));
        replies.insert(unquote(r[1]));
    }
    for (const auto& [name, row] : types) {
        INFO(name);
        if (row[2] == "client → daemon") CHECK(requests.count(name) == 1);
        else CHECK(replies.count(name) == 1);
    }
    for (const auto& name : requests) CHECK(types.at(name)[2] == "client → daemon");
    for (const auto& name : replies) CHECK(types.at(name)[2] == "daemon → client");
}

TEST_CASE("doc: the error code table matches PAGERD_ERROR_CODES", "[doc]")
{
    const auto doc = by_name(table("Error codes", {"code", "value", "sent when", "closes"}), 4);
    for (const auto& e : k_errors) {
        INFO(e.name);
        REQUIRE(doc.count(e.name) == 1);
        CHECK(number(doc.at(e.name)[1]) == e.value);
        CHECK(std::string(error_code_name(static_cast<ErrorCode>(e.value))) == e.name);
        CHECK_FALSE(doc.at(e.name)[2].empty());
    }
    for (const auto& [name, row] : doc) {
        INFO("documented error " << name << " = " << row[1]);
        CHECK(std::string(error_code_name(static_cast<ErrorCode>(number(row[1])))) == name);
    }
    CHECK(doc.size() == k_errors.size());
}

TEST_CASE("doc: the capability table matches PAGERD_CAPABILITIES", "[doc]")
{
    const auto doc = by_name(table("Capabilities", {"capability", "bit", "the daemon ..."}), 3);
    for (const auto& c : k_caps) {
        INFO(c.name);
        REQUIRE(doc.count(c.name) == 1);
        CHECK(number(doc.at(c.name)[1]) == c.value);
    }
    for (const auto& [name, row] : doc) {
        INFO("documented capability " << name << " = bit " << row[1]);
        const auto bit = number(row[1]);
        REQUIRE(bit < 64);
        const char* code_name = capability_name(static_cast<unsigned>(bit));
        REQUIRE(code_name != nullptr);
        CHECK(std::string(code_name) == name);
    }
    CHECK(doc.size() == k_caps.size());
}

TEST_CASE("doc: the header layout matches the encoder", "[doc]")
{
    const auto fields = layout(table("Header", k_layout_header));
    CHECK(fixed_size(fields) == k_header_size);
    const auto b = encode(Message{0xa1b2c3d4, Ping{.nonce = 1}});
    const std::map<std::string, std::uint64_t> expected = {
        {"magic", k_magic},
        {"version", k_version},
        {"type", static_cast<std::uint64_t>(Type::PING)},
        {"length", b.size()},
        {"request_id", 0xa1b2c3d4},
    };
    REQUIRE(fields.size() == expected.size());
    for (const auto& f : fields) {
        INFO("header." << f.name);
        REQUIRE(expected.count(f.name) == 1);
        CHECK(little_endian(b, f.offset, f.size) == expected.at(f.name));
    }
}

TEST_CASE("doc: an empty REGIONS_REPLY is 10 bytes and each entry adds 136", "[doc]")
{
    const auto doc =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    const auto bb = body_bytes(doc.at("REGIONS_REPLY")[4]);
    CHECK(bb.fixed == 10);
    CHECK(bb.per_entry == 136);
    CHECK_FALSE(bb.string);
    CHECK(encode(Message{0, RegionsReply{}}).size() == k_header_size + 10);
    CHECK(encode(Message{0, RegionsReply{.entries = {RegionEntry{}}}}).size() ==
          k_header_size + 10 + 136);
    // k_max_region_entries is the most entries one datagram holds, and the document's
    // worked example of the largest reply agrees.
    CHECK(k_header_size + 10 + 136 * k_max_region_entries <= k_max_message_size);
    CHECK(k_header_size + 10 + 136 * (k_max_region_entries + 1) > k_max_message_size);
    const std::string example = "With " + std::to_string(k_max_region_entries) +
                                " entries the datagram is 16 + 10 + " +
                                std::to_string(136 * k_max_region_entries) + " = " +
                                std::to_string(k_header_size + 10 + 136 * k_max_region_entries) +
                                " bytes";
    INFO(example);
    CHECK(read_doc().find(example) != std::string::npos);
}

TEST_CASE("doc: STATUS_REPLY is 314 bytes before its version string", "[doc]")
{
    const auto doc =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    const auto bb = body_bytes(doc.at("STATUS_REPLY")[4]);
    CHECK(bb.fixed == 314);
    CHECK(bb.string);
    CHECK(encode(Message{0, StatusReply{}}).size() == k_header_size + 314);
    CHECK(encode(Message{0, StatusReply{.version = "0.1.0"}}).size() == k_header_size + 314 + 5);
}

TEST_CASE("doc: body bytes in the type table match encoded default messages", "[doc]")
{
    const auto doc =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    for (const auto& t : k_types) {
        INFO(t.name);
        const auto bb = body_bytes(doc.at(t.name)[4]);

        // Empty strings and no entries: the fixed part.
        const auto encoded = encode(Message{0, k_bodies.at(t.name)});
        CHECK(encoded.size() - k_header_size == bb.fixed);

        // "+ E per entry": each entry adds E bytes, up to the largest reply.
        REQUIRE(k_arrays.count(t.name) == (bb.per_entry > 0 ? 1u : 0u));
        if (bb.per_entry > 0) {
            for (const std::size_t n : {std::size_t{1}, std::size_t{2}, k_max_region_entries}) {
                INFO(n << " entries");
                Body b = k_bodies.at(t.name);
                k_arrays.at(t.name).resize(b, n);
                const auto with = encode(Message{0, b});
                CHECK(with.size() - k_header_size == bb.fixed + n * bb.per_entry);
                CHECK(with.size() <= k_max_message_size);
            }
        }

        // The body layout agrees: same fixed size, one string field, the last, iff
        // "+ string", several iff "+ strings", an array of E-byte elements iff
        // "+ E per entry", laid out in E bytes.
        const Table* body = body_table(t.name, t.value);
        if (bb.fixed > 0) REQUIRE(body != nullptr);
        const auto fields = body ? layout(*body) : std::vector<Field>{};
        CHECK(fixed_size(fields) == bb.fixed);
        const auto strings = std::count_if(fields.begin(), fields.end(), [](const Field& f) { return f.string; });
        CHECK((!fields.empty() && fields.back().string && strings == 1) == bb.string);
        CHECK((strings > 1) == bb.strings);
        CHECK((!fields.empty() && fields.back().array) == (bb.per_entry > 0));
        if (bb.per_entry > 0) {
            CHECK(fields.back().name == k_arrays.at(t.name).field);
            CHECK(fields.back().element == bb.per_entry);
            CHECK(fixed_size(layout(entry_table(t.name))) == bb.per_entry);
        }
    }
}

TEST_CASE("doc: every documented field sits at its documented offset", "[doc]")
{
    std::set<std::string> documented;
    for (const auto& t : k_types) {
        const Table* body = body_table(t.name, t.value);
        if (!body) continue;
        const auto fields = layout(*body);
        const Body empty = k_bodies.at(t.name);
        for (const auto& f : fields) {
            const std::string key = t.name + "." + f.name;
            INFO(key << " at offset " << f.offset << ", " << f.size << " bytes");
            const std::size_t at = k_header_size + f.offset;
            if (f.array) {
                // Its elements have their own table and test; here only that it is one.
                REQUIRE(k_arrays.count(t.name) == 1);
                CHECK(k_arrays.at(t.name).field == f.name);
                continue;
            }
            if (f.name == "reserved") {
                // Zero on the wire however the other fields are set.
                Body all = empty;
                for (const auto& [k, set] : k_numbers)
                    if (k.rfind(t.name + ".", 0) == 0) set(all, ~std::uint64_t{0});
                for (const auto& [k, arr] : k_fixed_arrays)
                    if (k.rfind(t.name + ".", 0) == 0)
                        for (std::size_t i = 0; i < arr.count; ++i) arr.set(all, i, ~std::uint64_t{0});
                CHECK(little_endian(encode(Message{0, all}), at, f.size) == 0);
                continue;
            }
            documented.insert(key);
            if (f.fixed_count > 0) {
                // Element i at offset + i × its size, each on its own.
                REQUIRE(k_fixed_arrays.count(key) == 1);
                const auto& arr = k_fixed_arrays.at(key);
                CHECK(arr.count == f.fixed_count);
                for (std::size_t i = 0; i < f.fixed_count; ++i) {
                    INFO("element " << i);
                    Body b = empty;
                    const std::uint64_t held = arr.set(b, i, 0x8877665544332211 + (i << 4));
                    CHECK(held != 0);
                    const auto bytes = encode(Message{0, b});
                    const std::size_t el = at + i * f.fixed_element;
                    CHECK(little_endian(bytes, el, f.fixed_element) == (held & mask(f.fixed_element)));
                    for (std::size_t k = k_header_size; k < bytes.size(); ++k)
                        if (k < el || k >= el + f.fixed_element) CHECK(bytes[k] == 0);
                }
                continue;
            }
            // Every number of the body 0 (MapShared's tracking defaults to UFFD_WP), so
            // that the body is all zeros but for the field under test.
            Body b = empty;
            for (const auto& [k, set] : k_numbers)
                if (k.rfind(t.name + ".", 0) == 0) set(b, 0);
            // The field's own value, and how many bytes it puts at `at` (a string: its
            // count and 3 bytes "sss").
            std::uint64_t held = 0;
            std::size_t width = f.size;
            const auto set_field = [&](Body& b2) {
                if (f.string) {
                    REQUIRE(k_strings.count(key) == 1);
                    held = k_strings.at(key)(b2, 3);
                    width = 2 + 3;
                } else {
                    REQUIRE(k_numbers.count(key) == 1);
                    held = k_numbers.at(key)(b2, 0x8877665544332211);
                    CHECK(held != 0);
                }
            };
            const auto check_field = [&](const std::vector<std::uint8_t>& bytes, std::size_t where) {
                CHECK(little_endian(bytes, where, f.string ? 2 : f.size) == (held & mask(f.string ? 2 : f.size)));
                if (f.string)
                    CHECK(std::string(bytes.begin() + static_cast<long>(where) + 2,
                                      bytes.begin() + static_cast<long>(where) + 5) == "sss");
            };
            {
                // The strings before it empty: at the fixed offset, and nothing else moved
                // (the rest of the body is still zero).
                Body one = b;
                set_field(one);
                const auto bytes = encode(Message{0, one});
                if (k_arrays.count(t.name) == 0)  // (REGIONS_REPLY.count adds entries)
                    CHECK(bytes.size() == k_header_size + fixed_size(fields) + (f.string ? 3 : 0));
                check_field(bytes, at);
                for (std::size_t i = k_header_size; i < bytes.size(); ++i)
                    if (i < at || i >= at + width) CHECK(bytes[i] == 0);
            }
            if (!f.after.empty()) {
                // "N + k + u": the strings before it moved it by their lengths, each a
                // different one.
                Body one = b;
                std::size_t shift = 0, j = 0;
                for (const auto& letter : f.after) {
                    const auto s = std::find_if(fields.begin(), fields.end(),
                                                [&](const Field& g) { return g.string && g.letter == letter; });
                    REQUIRE(s != fields.end());
                    const std::string skey = t.name + "." + s->name;
                    REQUIRE(k_strings.count(skey) == 1);
                    shift += k_strings.at(skey)(one, 5 + 6 * j++);
                }
                set_field(one);
                const auto bytes = encode(Message{0, one});
                INFO("after strings of " << shift << " bytes in all");
                CHECK(bytes.size() == k_header_size + fixed_size(fields) + shift + (f.string ? 3 : 0));
                check_field(bytes, at + shift);
            }
        }
    }
    for (const auto& [key, set] : k_numbers) {
        INFO("field in the code: " << key);
        CHECK(documented.count(key) == 1);
    }
    for (const auto& [key, set] : k_strings) {
        INFO("field in the code: " << key);
        CHECK(documented.count(key) == 1);
    }
    for (const auto& [key, arr] : k_fixed_arrays) {
        INFO("field in the code: " << key);
        CHECK(documented.count(key) == 1);
    }
}

TEST_CASE("doc: every string's documented limit is the one the codec keeps", "[doc]")
{
    // "string, n ≤ `k_max_...`": the encoder cuts the string there, and the decoder takes
    // a string of that length back. A string whose meaning names no limit has k_max_text.
    const std::map<std::string, std::size_t> limits = {
        {"k_max_name", k_max_name}, {"k_max_text", k_max_text}, {"k_max_uri", k_max_uri}};
    std::set<std::string> seen;
    for (const auto& t : k_types) {
        const Table* body = body_table(t.name, t.value);
        if (!body) continue;
        const auto fields = layout(*body);
        for (const auto& f : fields) {
            if (!f.string) continue;
            const std::string key = t.name + "." + f.name;
            INFO(key);
            std::string meaning;
            for (const auto& r : body->rows)
                if (unquote(r[0]) == f.name) meaning = r[3];
            std::size_t limit = k_max_text;
            const std::string le = f.letter + " ≤ `";
            if (const auto at = meaning.find(le); at != std::string::npos) {
                const auto from = at + le.size();
                const auto end = meaning.find('`', from);
                REQUIRE(end != std::string::npos);
                const std::string name = meaning.substr(from, end - from);
                INFO("limit " << name);
                REQUIRE(limits.count(name) == 1);
                limit = limits.at(name);
                seen.insert(name);
            }
            REQUIRE(k_strings.count(key) == 1);
            Body b = k_bodies.at(t.name);
            k_strings.at(key)(b, limit + 7);
            const auto cut = encode(Message{0, b});
            CHECK(little_endian(cut, k_header_size + f.offset, 2) == limit);
            CHECK(cut.size() == k_header_size + fixed_size(fields) + limit);
            CHECK(decode(cut, fds_expected(type_of(b))).ok());
            // One byte more, written by hand: MALFORMED.
            auto over = cut;
            over.insert(over.begin() + static_cast<long>(k_header_size + f.offset + 2), 's');
            over[k_header_size + f.offset] = static_cast<std::uint8_t>(limit + 1);
            over[k_header_size + f.offset + 1] = static_cast<std::uint8_t>((limit + 1) >> 8);
            const auto len = static_cast<std::uint32_t>(over.size());
            for (int i = 0; i < 4; ++i) over[8 + i] = static_cast<std::uint8_t>(len >> (8 * i));
            const auto r = decode(over, fds_expected(type_of(b)));
            REQUIRE_FALSE(r.ok());
            CHECK(r.error().code == static_cast<int>(ErrorCode::MALFORMED));
        }
    }
    CHECK(seen == std::set<std::string>{"k_max_name", "k_max_text", "k_max_uri"});
}

TEST_CASE("doc: every REGIONS_REPLY entry field sits at its documented offset", "[doc]")
{
    const Table* reply = body_table("REGIONS_REPLY", static_cast<std::uint64_t>(Type::REGIONS_REPLY));
    REQUIRE(reply != nullptr);
    const auto body = layout(*reply);
    REQUIRE_FALSE(body.empty());
    const Field array = body.back();
    REQUIRE(array.array);
    const auto fields = layout(entry_table("REGIONS_REPLY"));
    REQUIRE(fixed_size(fields) == array.element);
    const auto& entries = k_arrays.at("REGIONS_REPLY");

    // Two default entries: the baseline every change is compared with.
    Body two = k_bodies.at("REGIONS_REPLY");
    entries.resize(two, 2);
    const auto baseline = encode(Message{0, two});
    REQUIRE(baseline.size() == k_header_size + array.offset + 2 * array.element);

    std::set<std::string> documented;
    for (const auto& f : fields) {
        INFO("entry." << f.name << " at offset " << f.offset << ", " << f.size << " bytes");
        REQUIRE_FALSE((f.string || f.array));
        for (std::size_t i = 0; i < 2; ++i) {
            INFO("entry " << i);
            const std::size_t at = k_header_size + array.offset + i * array.element + f.offset;
            Body b = two;
            if (f.name == "reserved") {
                // Zero on the wire however the other fields of both entries are set.
                for (std::size_t j = 0; j < 2; ++j)
                    for (const auto& [name, set] : k_entry_fields) set(entries.at(b, j), ~std::uint64_t{0});
                CHECK(little_endian(encode(Message{0, b}), at, f.size) == 0);
                continue;
            }
            documented.insert(f.name);
            if (f.fixed_count > 0) {
                REQUIRE(k_entry_arrays.count(f.name) == 1);
                const auto& arr = k_entry_arrays.at(f.name);
                CHECK(arr.count == f.fixed_count);
                for (std::size_t e = 0; e < f.fixed_count; ++e) {
                    INFO("element " << e);
                    Body one = two;
                    const std::uint64_t held = arr.set(entries.at(one, i), e, 0x8877665544332211 + (e << 4));
                    CHECK(held != 0);
                    const auto bytes = encode(Message{0, one});
                    REQUIRE(bytes.size() == baseline.size());
                    const std::size_t el = at + e * f.fixed_element;
                    CHECK(little_endian(bytes, el, f.fixed_element) == (held & mask(f.fixed_element)));
                    for (std::size_t k = 0; k < bytes.size(); ++k)
                        if (k < el || k >= el + f.fixed_element) CHECK(bytes[k] == baseline[k]);
                }
                continue;
            }
            REQUIRE(k_entry_fields.count(f.name) == 1);
            const std::uint64_t held = k_entry_fields.at(f.name)(entries.at(b, i), 0x8877665544332211);
            CHECK(held != 0);
            const auto bytes = encode(Message{0, b});
            REQUIRE(bytes.size() == baseline.size());
            CHECK(little_endian(bytes, at, f.size) == (held & mask(f.size)));
            // Nothing else moved.
            for (std::size_t k = 0; k < bytes.size(); ++k)
                if (k < at || k >= at + f.size) CHECK(bytes[k] == baseline[k]);
        }
    }
    for (const auto& [name, set] : k_entry_fields) {
        INFO("entry field in the code: " << name);
        CHECK(documented.count(name) == 1);
    }
    for (const auto& [name, arr] : k_entry_arrays) {
        INFO("entry field in the code: " << name);
        CHECK(documented.count(name) == 1);
    }
}

namespace {

// An enum table ("| `NAME` | value | ... |") against the enumerators of the code, both ways.
void check_enum_table(const Table& t, const std::map<std::string, unsigned>& code)
{
    const auto doc = by_name(t, 3);
    std::set<std::uint64_t> values;
    for (const auto& [name, value] : code) {
        INFO(name);
        REQUIRE(doc.count(name) == 1);
        CHECK(number(doc.at(name)[1]) == value);
        CHECK_FALSE(doc.at(name)[2].empty());
    }
    for (const auto& [name, row] : doc) {
        INFO("documented " << name << " = " << row[1]);
        CHECK(code.count(name) == 1);
        CHECK(values.insert(number(row[1])).second);
    }
    CHECK(doc.size() == code.size());
    // Values run from 0 without a gap: a gap would be a value the table forgot.
    std::uint64_t expect = 0;
    for (const auto v : values) CHECK(v == expect++);
}

}  // namespace

TEST_CASE("doc: the access table matches enum Access", "[doc]")
{
    check_enum_table(table("Region kinds", {"access", "value", "region"}),
                     {
                         {"READ_ONLY", static_cast<unsigned>(Access::READ_ONLY)},
                         {"PRIVATE_WRITABLE", static_cast<unsigned>(Access::PRIVATE_WRITABLE)},
                         {"SHARED", static_cast<unsigned>(Access::SHARED)},
                     });
}

TEST_CASE("doc: the tracking table matches enum Tracking", "[doc]")
{
    check_enum_table(table("Region kinds", {"tracking", "value", "writes are found by"}),
                     {
                         {"NONE", static_cast<unsigned>(Tracking::NONE)},
                         {"UFFD_WP", static_cast<unsigned>(Tracking::UFFD_WP)},
                         {"SEGV", static_cast<unsigned>(Tracking::SEGV)},
                         {"ASYNC", static_cast<unsigned>(Tracking::ASYNC)},
                     });
}

TEST_CASE("doc: the prefetch table matches enum Prefetch", "[doc]")
{
    check_enum_table(table("Region kinds", {"prefetch", "value", "the daemon loads"}),
                     {
                         {"SEQUENTIAL", static_cast<unsigned>(Prefetch::SEQUENTIAL)},
                         {"NONE", static_cast<unsigned>(Prefetch::NONE)},
                         {"ALL", static_cast<unsigned>(Prefetch::ALL)},
                     });
}

TEST_CASE("doc: the latency histogram table matches latency_bucket()", "[doc]")
{
    const std::string doc = read_doc();
    CHECK(doc.find(std::to_string(k_latency_buckets) + " log-scale buckets\n(`k_latency_buckets`") !=
          std::string::npos);
    const auto& t = table("Message bodies", {"bucket", "service time"});
    REQUIRE(t.rows.size() == 3);
    for (const auto& r : t.rows) REQUIRE(r.size() == 2);
    const std::string us = " µs";

    // | 0 | under N µs |
    CHECK(number(t.rows[0][0]) == 0);
    const std::string under = "under ";
    REQUIRE(t.rows[0][1].rfind(under, 0) == 0);
    REQUIRE(t.rows[0][1].size() > under.size() + us.size());
    REQUIRE(t.rows[0][1].substr(t.rows[0][1].size() - us.size()) == us);
    const std::uint64_t first_edge_us =
        number(t.rows[0][1].substr(under.size(), t.rows[0][1].size() - under.size() - us.size()));
    CHECK(latency_bucket(0) == 0);
    CHECK(latency_bucket(first_edge_us * 1000 - 1) == 0);
    CHECK(latency_bucket(first_edge_us * 1000) == 1);

    // | `i` = A … B | 2^`i` µs up to, not including, 2^(`i`+1) µs ... |
    const std::string range = t.rows[1][0];
    const std::string lead = "`i` = ", dots = " … ";
    REQUIRE(range.rfind(lead, 0) == 0);
    const auto dots_at = range.find(dots);
    REQUIRE(dots_at != std::string::npos);
    const auto lo = number(range.substr(lead.size(), dots_at - lead.size()));
    const auto hi = number(range.substr(dots_at + dots.size()));
    CHECK(lo == 1);
    CHECK(hi == k_latency_buckets - 2);
    CHECK(t.rows[1][1].rfind("2^`i` µs up to, not including, 2^(`i`+1) µs", 0) == 0);
    for (std::uint64_t i = lo; i <= hi; ++i) {
        INFO("bucket " << i);
        CHECK(latency_bucket((std::uint64_t{1} << i) * 1000) == i);
        CHECK(latency_bucket((std::uint64_t{2} << i) * 1000 - 1) == i);
    }
    // The worked example: "(bucket 5: 32–64 µs)".
    CHECK(t.rows[1][1].find("bucket 5: 32–64 µs") != std::string::npos);
    CHECK(latency_bucket(32000) == 5);
    CHECK(latency_bucket(64000 - 1) == 5);

    // | 15 | N µs or more |
    CHECK(number(t.rows[2][0]) == k_latency_buckets - 1);
    const std::string more = us + " or more";
    REQUIRE(t.rows[2][1].size() > more.size());
    REQUIRE(t.rows[2][1].substr(t.rows[2][1].size() - more.size()) == more);
    const std::uint64_t last_edge_us = number(t.rows[2][1].substr(0, t.rows[2][1].size() - more.size()));
    CHECK(last_edge_us == (std::uint64_t{1} << (k_latency_buckets - 1)));
    CHECK(latency_bucket(last_edge_us * 1000 - 1) == k_latency_buckets - 2);
    CHECK(latency_bucket(last_edge_us * 1000) == k_latency_buckets - 1);
    CHECK(latency_bucket(~std::uint64_t{0}) == k_latency_buckets - 1);
}

TEST_CASE("doc: the flag bits named in the layouts match constants.hpp", "[doc]")
{
    // Every "bit N `NAME` (`k_constant`)" in a flags field, against the constant; and the
    // documented bits of each field are exactly its k_*_known_flags.
    const std::map<std::string, std::uint32_t> code = {
        {"k_uffd_user_mode_only", k_uffd_user_mode_only},
        {"k_uffd_async_wp", k_uffd_async_wp},
        {"k_map_private_writable", k_map_private_writable},
        {"k_map_cache", k_map_cache},
        {"k_map_shared", k_map_shared},
        {"k_prefetch_wait", k_prefetch_wait},
    };
    const std::map<std::string, std::uint32_t> known = {
        {"REGISTER_UFFD", k_uffd_known_flags},
        {"MAP", k_map_known_flags},
        {"MAP_STORE", k_map_known_flags},
        {"PREFETCH", k_prefetch_known_flags},
    };
    std::set<std::string> seen;
    for (const auto& [type, all] : known) {
        INFO(type << ".flags");
        const Table* body = nullptr;
        for (const auto& t : k_types)
            if (t.name == type) body = body_table(t.name, t.value);
        REQUIRE(body != nullptr);
        std::string meaning;
        for (const auto& r : body->rows)
            if (unquote(r[0]) == "flags") meaning = r[3];
        REQUIRE_FALSE(meaning.empty());
        std::uint32_t documented = 0;
        for (std::size_t pos = meaning.find("bit "); pos != std::string::npos;
             pos = meaning.find("bit ", pos + 1)) {
            // bit N `NAME` (`k_constant`)
            const auto name_at = meaning.find(" `", pos + 4);
            const auto const_at = meaning.find("(`", pos);
            const auto const_end = meaning.find("`)", pos);
            REQUIRE(name_at != std::string::npos);
            REQUIRE(const_at != std::string::npos);
            REQUIRE(const_end != std::string::npos);
            const auto bit = number(meaning.substr(pos + 4, name_at - pos - 4));
            const std::string constant = meaning.substr(const_at + 2, const_end - const_at - 2);
            INFO("bit " << bit << " " << constant);
            REQUIRE(code.count(constant) == 1);
            CHECK(code.at(constant) == (std::uint32_t{1} << bit));
            CHECK((documented & code.at(constant)) == 0);
            documented |= code.at(constant);
            seen.insert(constant);
        }
        CHECK(documented == all);
    }
    CHECK(seen.size() == code.size());
}

TEST_CASE("doc: the decoding order names every daemon → client type", "[doc]")
{
    const std::string doc = read_doc();
    const auto start = doc.find("7. direction:");
    REQUIRE(start != std::string::npos);
    const auto end = doc.find("→ `UNKNOWN_TYPE`", start);
    REQUIRE(end != std::string::npos);
    const std::string step = doc.substr(start, end - start);
    const auto types =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    for (const auto& [name, row] : types) {
        INFO(name << " (" << row[2] << ")");
        const bool listed = step.find("`" + name + "`") != std::string::npos;
        CHECK(listed == (row[2] == "daemon → client"));
    }
}
