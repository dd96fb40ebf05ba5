// proto/PROTOCOL.md and the code agree: the tables of the document are parsed and compared
// with constants.hpp in both directions, and every documented body layout is checked
// against the bytes the encoder produces.
#include <catch2/catch.hpp>

#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
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
using Setter = std::function<void(Body&, std::uint64_t)>;
#define NUM(TYPE, Struct, field)                                        \
    {                                                                   \
        #TYPE "." #field, [](Body& b, std::uint64_t v) {                \
            auto& m = std::get<Struct>(b);                              \
            m.field = static_cast<decltype(Struct::field)>(v);          \
        }                                                               \
    }
#define STR(TYPE, Struct, field)                                        \
    {                                                                   \
        #TYPE "." #field, [](Body& b, std::uint64_t v) {                \
            std::get<Struct>(b).field = std::string(v, 's');            \
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
    NUM(MAPPED, Mapped, region_id),
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
    NUM(PING, Ping, nonce),
    NUM(PONG, Pong, nonce),
    NUM(ERROR, ErrorReply, code),
};
const std::map<std::string, Setter> k_strings = {
    STR(HELLO, Hello, name),
    STR(WELCOME, Welcome, version),
    STR(STATUS_REPLY, StatusReply, version),
    STR(ERROR, ErrorReply, text),
};
#undef NUM
#undef STR

// ---- layouts -----------------------------------------------------------------------

const Row k_layout_header = {"field", "offset", "size", "meaning"};

struct Field {
    std::string name;
    std::size_t offset = 0;
    std::size_t size = 0;  // for a string: 2, its count
    bool string = false;
};

// Parses a layout table and checks that its fields are contiguous from offset 0, that
// the size matches the stated type, and that a string is only ever the last field.
std::vector<Field> layout(const Table& t)
{
    std::vector<Field> out;
    std::size_t next = 0;
    for (const auto& r : t.rows) {
        INFO("layout row " << Catch::Detail::stringify(r));
        REQUIRE(r.size() == 4);
        Field f;
        f.name = unquote(r[0]);
        f.offset = number(r[1]);
        f.string = r[2] == "2 + n";
        f.size = f.string ? 2 : number(r[2]);
        CHECK(f.offset == next);
        const std::string kind = f.string ? "string" : "u" + std::to_string(8 * f.size);
        CHECK(r[3].rfind(kind, 0) == 0);
        if (!out.empty()) CHECK_FALSE(out.back().string);
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

TEST_CASE("doc: body bytes in the type table match encoded default messages", "[doc]")
{
    const auto doc =
        by_name(table("Message types", {"type", "number", "direction", "fds", "body bytes"}), 5);
    for (const auto& t : k_types) {
        INFO(t.name);
        const std::string cell = doc.at(t.name)[4];
        const auto plus = cell.find(" + string");
        const bool has_string = plus != std::string::npos;
        if (has_string) CHECK(cell.substr(plus) == " + string");
        const auto fixed = number(has_string ? cell.substr(0, plus) : cell);

        const auto encoded = encode(Message{0, k_bodies.at(t.name)});
        CHECK(encoded.size() - k_header_size == fixed);

        // The body layout agrees: same fixed size, and a string field iff "+ string".
        const Table* body = body_table(t.name, t.value);
        if (fixed > 0) REQUIRE(body != nullptr);
        const auto fields = body ? layout(*body) : std::vector<Field>{};
        CHECK(fixed_size(fields) == fixed);
        CHECK((!fields.empty() && fields.back().string) == has_string);
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
            if (f.name == "reserved") {
                // Zero on the wire however the other fields are set.
                Body all = empty;
                for (const auto& [k, set] : k_numbers)
                    if (k.rfind(t.name + ".", 0) == 0) set(all, ~std::uint64_t{0});
                CHECK(little_endian(encode(Message{0, all}), at, f.size) == 0);
                continue;
            }
            documented.insert(key);
            Body b = empty;
            if (f.string) {
                REQUIRE(k_strings.count(key) == 1);
                k_strings.at(key)(b, 3);
                const auto bytes = encode(Message{0, b});
                CHECK(little_endian(bytes, at, 2) == 3);
                CHECK(std::string(bytes.begin() + static_cast<long>(at) + 2, bytes.end()) ==
                      "sss");
            } else {
                REQUIRE(k_numbers.count(key) == 1);
                const std::uint64_t marker = 0x8877665544332211;
                k_numbers.at(key)(b, marker);
                const auto bytes = encode(Message{0, b});
                CHECK(little_endian(bytes, at, f.size) == (marker & mask(f.size)));
                // Nothing else moved: the rest of the body is still zero.
                for (std::size_t i = k_header_size; i < bytes.size(); ++i)
                    if (i < at || i >= at + f.size) CHECK(bytes[i] == 0);
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
}
