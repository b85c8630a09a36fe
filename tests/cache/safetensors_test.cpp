// The cache file's format: CRC-32 as zlib computes it; write then read gives the same
// tensors and metadata; the write is atomic (no temporary left, an old file replaced
// whole); truncation at every section boundary, a bad header length, trailing bytes and
// random bit flips in tensor data are each rejected with their own message.

#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "ekv/cache/safetensors.hpp"
#include "test_seed.hpp"

namespace {

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes, std::size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(n));
}

std::string error_of(const std::string& path) {
  try {
    (void)ekv::read_safetensors(path);
  } catch (const ekv::Error& e) {
    return e.what();
  }
  return "";
}

struct Sample {
  std::vector<float> a;
  std::vector<std::int32_t> b;
  std::vector<ekv::SafetensorsEntry> entries() const {
    return {{"a", "F32", {3, 5}, a.data(), a.size() * sizeof(float)},
            {"b.ints", "I32", {7}, b.data(), b.size() * sizeof(std::int32_t)}};
  }
};

Sample sample(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Sample s{std::vector<float>(15), std::vector<std::int32_t>(7)};
  for (float& x : s.a) x = std::uniform_real_distribution<float>(-1, 1)(rng);
  for (std::int32_t& x : s.b) x = static_cast<std::int32_t>(rng());
  return s;
}

}  // namespace

TEST_CASE("crc32 is zlib's") {
  CHECK(ekv::crc32(0, "123456789", 9) == 0xCBF43926u);
  CHECK(ekv::crc32(0, "", 0) == 0u);
  const std::string text = "The quick brown fox jumps over the lazy dog";
  CHECK(ekv::crc32(0, text.data(), text.size()) == 0x414FA339u);
  // in pieces, across the 8-byte steps
  CHECK(ekv::crc32(ekv::crc32(0, text.data(), 13), text.data() + 13, text.size() - 13) == 0x414FA339u);
}

TEST_CASE("crc32_combine gives the CRC of the whole at every cut; threaded checksums at every thread count") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  std::mt19937_64 rng(seed);
  std::vector<unsigned char> bytes((std::size_t{8} << 20) * 3 + 12345);  // more than three 8 MiB pieces
  for (unsigned char& b : bytes) b = static_cast<unsigned char>(rng());
  const std::uint32_t whole = ekv::crc32(0, bytes.data(), bytes.size());
  for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{4096}, bytes.size() - 1,
                          bytes.size()}) {
    INFO("cut at " << cut);
    const std::uint32_t a = ekv::crc32(0, bytes.data(), cut), b = ekv::crc32(0, bytes.data() + cut, bytes.size() - cut);
    CHECK(ekv::crc32_combine(a, b, bytes.size() - cut) == whole);
  }
  const std::string text = "The quick brown fox jumps over the lazy dog";
  CHECK(ekv::crc32_combine(ekv::crc32(0, text.data(), 4), ekv::crc32(0, text.data() + 4, text.size() - 4),
                           text.size() - 4) == 0x414FA339u);
  // the threaded checksums of a write and a read, at every thread count, are the whole's
  const std::string path = "safetensors_test_threads.safetensors";
  const std::vector<ekv::SafetensorsEntry> entries = {{"bytes", "U8", {static_cast<std::int64_t>(bytes.size())},
                                                       bytes.data(), bytes.size()},
                                                      {"empty", "U8", {0}, bytes.data(), 0}};
  for (unsigned threads : {1u, 2u, 5u, 0u}) {
    INFO(threads << " threads");
    ekv::write_safetensors(path, entries, {}, threads);
    const ekv::SafetensorsFile f = ekv::read_safetensors(path, threads);
    CHECK(f.metadata.at("crc32.bytes") == ekv::crc32_hex(whole));
    CHECK(f.metadata.at("crc32.empty") == "00000000");
  }
  std::remove(path.c_str());
}

TEST_CASE("write then read: the same tensors, shapes, dtypes and metadata; atomic") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const std::string path = "safetensors_test_roundtrip.safetensors";
  const Sample s = sample(seed);
  ekv::write_safetensors(path, s.entries(), {{"note", "a \"quoted\"\\ value"}});
  CHECK_FALSE(std::ifstream(path + ".tmp").good());
  const ekv::SafetensorsFile f = ekv::read_safetensors(path);
  CHECK(f.metadata.at("note") == "a \"quoted\"\\ value");
  CHECK(f.metadata.count("crc32.a") == 1);
  const ekv::SafetensorsTensor& a = f.tensors.at("a");
  CHECK(a.dtype == "F32");
  CHECK(a.shape == std::vector<std::int64_t>{3, 5});
  CHECK(std::vector<float>(reinterpret_cast<const float*>(f.bytes_of(a)),
                           reinterpret_cast<const float*>(f.bytes_of(a)) + 15) == s.a);
  const ekv::SafetensorsTensor& b = f.tensors.at("b.ints");
  CHECK(std::vector<std::int32_t>(reinterpret_cast<const std::int32_t*>(f.bytes_of(b)),
                                  reinterpret_cast<const std::int32_t*>(f.bytes_of(b)) + 7) == s.b);
  const std::vector<unsigned char> bytes = read_bytes(path);
  std::uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= std::uint64_t{bytes[i]} << (8 * i);
  CHECK(header % 8 == 0);  // padded, as safetensors asks
  CHECK(bytes.size() == 8 + header + 15 * 4 + 7 * 4);

  // a second write replaces the file whole
  const Sample t = sample(seed + 1);
  ekv::write_safetensors(path, t.entries(), {});
  const ekv::SafetensorsFile g = ekv::read_safetensors(path);
  CHECK(std::equal(t.a.begin(), t.a.end(), reinterpret_cast<const float*>(g.bytes_of(g.tensors.at("a")))));
  CHECK(g.metadata.count("note") == 0);
  // an unwritable place: an error naming it, no file
  CHECK_THROWS_WITH_AS(ekv::write_safetensors("/nonexistent-dir/x.safetensors", s.entries(), {}),
                       doctest::Contains("cannot create /nonexistent-dir/x.safetensors.tmp"), ekv::Error);
  std::remove(path.c_str());
}

TEST_CASE("tensors given by fill stream through small staging into the same file; a failing fill leaves the old") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const std::string plain = "safetensors_test_plain.safetensors", filled = "safetensors_test_filled.safetensors";
  std::mt19937_64 rng(seed);
  std::vector<unsigned char> big((std::size_t{9} << 20) + 77);  // more than one 8 MiB checksum piece
  for (unsigned char& b : big) b = static_cast<unsigned char>(rng());
  const Sample s = sample(seed + 1);
  std::vector<ekv::SafetensorsEntry> entries = s.entries();
  entries.push_back({"big", "U8", {static_cast<std::int64_t>(big.size())}, big.data(), big.size()});
  ekv::write_safetensors(plain, entries, {{"k", "v"}}, 1);
  // the same tensors copied in by fill, through two halves of 4,000 bytes: many chunks each
  std::vector<ekv::SafetensorsEntry> by_fill = entries;
  int calls = 0;
  for (ekv::SafetensorsEntry& e : by_fill) {
    const auto* src = static_cast<const unsigned char*>(e.data);
    e.data = nullptr;
    e.fill = [src, &calls](void* dst, std::size_t offset, std::size_t n) {
      REQUIRE(n <= 4000);
      std::memcpy(dst, src + offset, n);
      ++calls;
    };
  }
  std::vector<unsigned char> staging(8000);
  ekv::write_safetensors(filled, by_fill, {{"k", "v"}}, 3, staging.data(), staging.size());
  CHECK(calls > static_cast<int>(big.size() / 4000));
  CHECK(read_bytes(plain) == read_bytes(filled));
  const ekv::SafetensorsFile f = ekv::read_safetensors(filled, 2);
  CHECK(std::equal(big.begin(), big.end(), f.bytes_of(f.tensors.at("big"))));
  // a fill that throws: its error, no temporary file, the old file as it was
  by_fill.back().fill = [](void*, std::size_t offset, std::size_t) {
    if (offset > 0) throw ekv::Error("device copy failed");
  };
  CHECK_THROWS_WITH_AS(ekv::write_safetensors(filled, by_fill, {}, 2, staging.data(), staging.size()),
                       doctest::Contains("device copy failed"), ekv::Error);
  CHECK_FALSE(std::ifstream(filled + ".tmp").good());
  CHECK(read_bytes(plain) == read_bytes(filled));
  // read back with a sink taking "big" through two halves of 3,000 bytes: its bytes reach
  // put in order and whole, the others stay in the file's data; a flipped bit in it is found
  std::vector<unsigned char> got(big.size(), 0);
  std::size_t next = 0;
  ekv::SafetensorsSink sink;
  std::vector<unsigned char> halves(6000);
  sink.take = [&](const std::string& name, const ekv::SafetensorsTensor& t) {
    return name == "big" && t.end - t.begin == big.size();
  };
  sink.put = [&](const std::string& name, std::size_t offset, const unsigned char* bytes, std::size_t n) {
    REQUIRE(name == "big");
    REQUIRE(offset == next);
    REQUIRE(n <= 3000);
    std::memcpy(got.data() + offset, bytes, n);
    next += n;
  };
  sink.staging = halves.data();
  sink.staging_bytes = halves.size();
  const ekv::SafetensorsFile g = ekv::read_safetensors(plain, 3, &sink);
  CHECK(next == big.size());
  CHECK(got == big);
  CHECK(std::equal(s.a.begin(), s.a.end(), reinterpret_cast<const float*>(g.bytes_of(g.tensors.at("a")))));
  std::vector<unsigned char> bytes = read_bytes(plain);
  bytes[bytes.size() - 1000] ^= 0x10;  // inside "big", the last tensor
  write_bytes(filled, bytes, bytes.size());
  next = 0;
  CHECK_THROWS_WITH_AS(ekv::read_safetensors(filled, 2, &sink), doctest::Contains("tensor 'big' is corrupted"),
                       ekv::Error);
  by_fill.back().fill = nullptr;
  CHECK_THROWS_WITH_AS(ekv::write_safetensors(filled, by_fill, {}), doctest::Contains("has neither data nor fill"),
                       ekv::Error);
  std::remove(plain.c_str());
  std::remove(filled.c_str());
}

TEST_CASE("truncation at every section boundary, bad lengths, trailing bytes and bit flips are each rejected") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const std::string path = "safetensors_test_damage.safetensors", damaged = "safetensors_test_damaged.safetensors";
  const Sample s = sample(seed);
  ekv::write_safetensors(path, s.entries(), {});
  const std::vector<unsigned char> bytes = read_bytes(path);
  std::uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= std::uint64_t{bytes[i]} << (8 * i);
  const std::size_t data = 8 + header;
  // every boundary: inside the length, after it, inside the header, after it, between tensors, one short of the end
  for (std::size_t n : {std::size_t{0}, std::size_t{4}, std::size_t{8}, std::size_t{8} + header / 2, data,
                        data + 15 * 4, bytes.size() - 1}) {
    INFO("truncated to " << n << " of " << bytes.size() << " bytes");
    write_bytes(damaged, bytes, n);
    CHECK_MESSAGE(error_of(damaged).find("truncated") != std::string::npos, error_of(damaged));
  }
  std::vector<unsigned char> longer = bytes;
  longer.push_back(0);
  write_bytes(damaged, longer, longer.size());
  CHECK(error_of(damaged).find("1 bytes after the last tensor") != std::string::npos);
  std::vector<unsigned char> garbage(64, 0xFF);
  write_bytes(damaged, garbage, garbage.size());
  CHECK(error_of(damaged).find("not a safetensors file") != std::string::npos);
  std::vector<unsigned char> not_json = bytes;
  not_json[8] = 'x';
  write_bytes(damaged, not_json, not_json.size());
  CHECK(error_of(damaged).find("the header is not a safetensors header") != std::string::npos);

  std::mt19937_64 rng(seed);
  for (int flip = 0; flip < 32; ++flip) {
    std::vector<unsigned char> bad = bytes;
    const std::size_t at = data + rng() % (bytes.size() - data);
    bad[at] ^= static_cast<unsigned char>(1u << (rng() % 8));
    write_bytes(damaged, bad, bad.size());
    const std::string e = error_of(damaged);
    INFO("bit flip at byte " << at << ": " << e);
    CHECK(e.find("is corrupted (crc32 ") != std::string::npos);
  }
  CHECK(error_of("no-such-file.safetensors").find("cannot open no-such-file.safetensors") != std::string::npos);
  std::remove(path.c_str());
  std::remove(damaged.c_str());
}

// tests/fuzz's kv_cache_file found a header whose \u escape held no hex digit: std::stoul
// threw std::invalid_argument through read_safetensors, past every catch of ekv::Error.
TEST_CASE("a \\u escape that is not four hex digits is rejected as ekv::Error (fuzz regression)") {
  const std::string path = "safetensors_test_escape.safetensors";
  const auto header_file = [&](const std::string& header) {
    std::vector<unsigned char> bytes(8);
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(std::uint64_t{header.size()} >> (8 * i));
    bytes.insert(bytes.end(), header.begin(), header.end());
    write_bytes(path, bytes, bytes.size());
  };
  // the fuzzer's input, minimized: 26 bytes
  const unsigned char crash[] = {0x12, 0, 0, 0, 0, 0, 0, 0, '{', '"', 'a', 'e', 'r', '_', '\\', 'u', '}',
                                 '}',  '}', 'n', 'u', 'm', 0, 0, 0, 0};
  write_bytes(path, std::vector<unsigned char>(std::begin(crash), std::end(crash)), sizeof crash);
  CHECK_MESSAGE(error_of(path).find("a \\u escape that is not 4 hex digits at byte") != std::string::npos,
                error_of(path));
  // and what std::stoul took or threw for: a sign, spaces, fewer digits, none
  for (const char* escape : {"\\uv060", "\\u+07f", "\\u-001", "\\u 07f", "\\u12\"}", "\\uzzzz"}) {
    INFO(escape);
    header_file(std::string("{\"__metadata__\":{\"k\":\"") + escape + "\"}}");
    CHECK_MESSAGE(error_of(path).find("a \\u escape that is not 4 hex digits") != std::string::npos, error_of(path));
  }
  header_file("{\"__metadata__\":{\"k\":\"\\u0068\\u004A\"}}");
  CHECK(ekv::read_safetensors(path).metadata.at("k") == "hJ");
  std::remove(path.c_str());
}
