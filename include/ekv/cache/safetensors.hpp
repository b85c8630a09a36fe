#pragma once
// The safetensors file format (https://huggingface.co/docs/safetensors), which a KVCache
// dump uses so that numpy, torch or the safetensors package read it without ekv:
//   8 bytes   little-endian u64 N, the header's length
//   N bytes   a JSON object: "__metadata__": {string: string} and, per tensor,
//             "name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}
//             (offsets relative to the data, which follows), padded with spaces to 8 bytes
//   the data  every tensor's bytes, row-major, little-endian, without gaps.
// ekv writes a CRC-32 (zlib's, as Python's zlib.crc32 computes it) of every tensor into
// the metadata as "crc32.<name>": 8 hex digits. The JSON reader here reads the subset
// safetensors headers use (objects, arrays, strings, whole numbers); ekv::ekv carries no
// JSON library. write_safetensors writes a temporary file, flushes it to the disk and
// renames it over the path, so a reader sees the old file or the new one, never a part.

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "ekv/core/error.hpp"

namespace ekv {

// CRC-32 with zlib's polynomial (0xEDB88320, reflected), slice-by-8: crc32(0, "123456789")
// is 0xCBF43926. Pass the previous result as `crc` to continue over more bytes.
inline std::uint32_t crc32(std::uint32_t crc, const void* data, std::size_t bytes) {
  static const auto tables = [] {
    std::array<std::array<std::uint32_t, 256>, 8> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (std::uint32_t i = 0; i < 256; ++i) {
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
  for (; bytes >= 8; bytes -= 8, p += 8) {
    std::uint32_t lo, hi;
    std::memcpy(&lo, p, 4);  // little-endian hosts (x86-64, aarch64)
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = tables[7][lo & 0xFFu] ^ tables[6][(lo >> 8) & 0xFFu] ^ tables[5][(lo >> 16) & 0xFFu] ^ tables[4][lo >> 24] ^
        tables[3][hi & 0xFFu] ^ tables[2][(hi >> 8) & 0xFFu] ^ tables[1][(hi >> 16) & 0xFFu] ^ tables[0][hi >> 24];
  }
  for (; bytes > 0; --bytes, ++p) c = tables[0][(c ^ *p) & 0xFFu] ^ (c >> 8);
  return ~c;
}

inline std::string crc32_hex(std::uint32_t crc) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

// One tensor to write: dtype as safetensors names it ("F32", "F16", "BF16", "I32", ...).
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::size_t bytes = 0;
};

// One tensor read: where its bytes are in SafetensorsFile::data.
struct SafetensorsTensor {
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;
};

struct SafetensorsFile {
  std::map<std::string, std::string> metadata;
  std::map<std::string, SafetensorsTensor> tensors;
  std::vector<unsigned char> data;  // everything after the header
  const unsigned char* bytes_of(const SafetensorsTensor& t) const { return data.data() + t.begin; }
};

namespace detail {

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char esc[7];
      std::snprintf(esc, sizeof esc, "\\u%04x", c);
      out += esc;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// A reader of the JSON a safetensors header holds; throws ekv::Error("<what>: ...") at the
// first thing it does not expect.
class HeaderReader {
 public:
  HeaderReader(const std::string& text, std::string what) : s_(text), what_(std::move(what)) {}

  SafetensorsFile read() {
    SafetensorsFile file;
    expect('{');
    if (peek() == '}') {
      ++i_;
    } else {
      do {
        const std::string key = string();
        expect(':');
        if (key == "__metadata__") {
          expect('{');
          if (peek() == '}') {
            ++i_;
          } else {
            do {
              const std::string k = string();
              expect(':');
              file.metadata[k] = string();
            } while (comma_or('}'));
          }
        } else {
          if (file.tensors.count(key)) fail("tensor '" + key + "' named twice");
          file.tensors[key] = tensor(key);
        }
      } while (comma_or('}'));
    }
    skip_space();
    if (i_ != s_.size()) fail("text after the header's object");
    return file;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(what_ + ": the header is not a safetensors header (" + why + " at byte " + std::to_string(i_) + ")");
  }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  char peek() {
    skip_space();
    if (i_ >= s_.size()) fail("end of text");
    return s_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  bool comma_or(char close) {
    const char c = peek();
    ++i_;
    if (c == ',') return true;
    if (c != close) fail(std::string("expected ',' or '") + close + "'");
    return false;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      const char c = s_[i_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated escape");
      const char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("short \\u escape");
          const unsigned long code = std::stoul(s_.substr(i_, 4), nullptr, 16);
          i_ += 4;
          if (code >= 0x80) fail("a \\u escape past ASCII");  // ekv writes none
          out += static_cast<char>(code);
          break;
        }
        default: fail("unknown escape");
      }
    }
  }
  std::int64_t whole() {
    skip_space();
    const std::size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    if (i_ == start || i_ - start > 18) fail("expected a whole number");
    return std::stoll(s_.substr(start, i_ - start));
  }
  std::vector<std::int64_t> numbers() {
    std::vector<std::int64_t> out;
    expect('[');
    if (peek() == ']') {
      ++i_;
      return out;
    }
    do out.push_back(whole());
    while (comma_or(']'));
    return out;
  }
  SafetensorsTensor tensor(const std::string& name) {
    SafetensorsTensor t;
    bool dtype = false, shape = false, offsets = false;
    expect('{');
    do {
      const std::string key = string();
      expect(':');
      if (key == "dtype") {
        t.dtype = string();
        dtype = true;
      } else if (key == "shape") {
        t.shape = numbers();
        shape = true;
      } else if (key == "data_offsets") {
        const auto o = numbers();
        if (o.size() != 2 || o[0] > o[1]) fail("tensor '" + name + "': data_offsets must be [begin, end]");
        t.begin = static_cast<std::size_t>(o[0]);
        t.end = static_cast<std::size_t>(o[1]);
        offsets = true;
      } else {
        fail("tensor '" + name + "': unknown field '" + key + "'");
      }
    } while (comma_or('}'));
    if (!dtype || !shape || !offsets) fail("tensor '" + name + "' lacks dtype, shape or data_offsets");
    return t;
  }

  const std::string& s_;
  std::string what_;
  std::size_t i_ = 0;
};

}  // namespace detail

// Writes the tensors in the order given, with `metadata` plus a crc32.<name> per tensor.
// Throws ekv::Error with the path and the system's reason where a write fails; the file at
// `path` is then untouched (the temporary one removed).
inline void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                              std::map<std::string, std::string> metadata) {
  std::string header = "{";
  std::size_t offset = 0;
  for (const SafetensorsEntry& t : tensors) {
    metadata["crc32." + t.name] = crc32_hex(crc32(0, t.data, t.bytes));
    std::string shape;
    for (std::int64_t d : t.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += detail::json_string(t.name) + ":{\"dtype\":" + detail::json_string(t.dtype) + ",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes) + "]},";
    offset += t.bytes;
  }
  header += "\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : metadata) {
    header += (first ? "" : ",") + detail::json_string(k) + ":" + detail::json_string(v);
    first = false;
  }
  header += "}}";
  header.append((8 - header.size() % 8) % 8, ' ');

  const std::string temporary = path + ".tmp";
  std::FILE* f = std::fopen(temporary.c_str(), "wb");
  if (f == nullptr) throw Error("write_safetensors: cannot create " + temporary + ": " + std::strerror(errno));
  const auto failed = [&](const char* what) {
    const std::string why = std::strerror(errno);
    std::fclose(f);
    std::remove(temporary.c_str());
    throw Error("write_safetensors: " + std::string(what) + " " + temporary + " failed: " + why);
  };
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(std::uint64_t{header.size()} >> (8 * i));
  if (std::fwrite(length, 1, 8, f) != 8 || std::fwrite(header.data(), 1, header.size(), f) != header.size()) {
    failed("writing the header of");
  }
  for (const SafetensorsEntry& t : tensors) {
    if (t.bytes != 0 && std::fwrite(t.data, 1, t.bytes, f) != t.bytes) failed("writing");
  }
  if (std::fflush(f) != 0) failed("flushing");
#if defined(__unix__) || defined(__APPLE__)
  if (fsync(fileno(f)) != 0) failed("syncing");
#endif
  if (std::fclose(f) != 0) {
    std::remove(temporary.c_str());
    throw Error("write_safetensors: closing " + temporary + " failed: " + std::strerror(errno));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(temporary.c_str());
    throw Error("write_safetensors: renaming " + temporary + " to " + path + " failed: " + why);
  }
}

// Reads and checks a whole file: the header's length within the file, the header's JSON,
// every tensor's bytes within the data and the data exactly as long as the tensors (a
// truncated or extended file fails), and every crc32.<name> the metadata holds. Throws
// ekv::Error naming the path and what is wrong.
inline SafetensorsFile read_safetensors(const std::string& path) {
  const std::string what = "read_safetensors: " + path;
  struct Closer {
    std::FILE* f;
    ~Closer() {
      if (f != nullptr) std::fclose(f);
    }
  } file_handle{std::fopen(path.c_str(), "rb")};
  std::FILE* f = file_handle.f;
  if (f == nullptr) throw Error("read_safetensors: cannot open " + path + ": " + std::strerror(errno));
  if (std::fseek(f, 0, SEEK_END) != 0) throw Error(what + ": cannot seek");
  const long end = std::ftell(f);
  if (end < 0 || std::fseek(f, 0, SEEK_SET) != 0) throw Error(what + ": cannot size");
  const auto size = static_cast<std::uint64_t>(end);
  unsigned char length[8];
  if (size < 8 || std::fread(length, 1, 8, f) != 8) {
    throw Error(what + ": truncated: " + std::to_string(size) + " bytes, less than the header's length");
  }
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= std::uint64_t{length[i]} << (8 * i);
  if (header_len > size - 8) {
    // a header length past the file: truncated if what follows looks like a header (or
    // nothing follows)
    const int first = std::fgetc(f);
    if ((first == '{' || first == EOF) && header_len < (std::uint64_t{1} << 30)) {
      throw Error(what + ": truncated: the header needs " + std::to_string(header_len) + " bytes, the file has " +
                  std::to_string(size - 8) + " after the length");
    }
    throw Error(what + ": not a safetensors file (its first 8 bytes are not a header length)");
  }
  std::string header(static_cast<std::size_t>(header_len), '\0');
  if (std::fseek(f, 8, SEEK_SET) != 0 || std::fread(header.data(), 1, header.size(), f) != header.size()) {
    throw Error(what + ": reading the header failed");
  }
  SafetensorsFile file = detail::HeaderReader(header, what).read();
  std::size_t data_end = 0;
  for (const auto& [name, t] : file.tensors) data_end = std::max(data_end, t.end);
  const std::uint64_t data_size = size - 8 - header_len;
  if (data_size < data_end) {
    throw Error(what + ": truncated: the tensors need " + std::to_string(data_end) + " bytes of data, the file has " +
                std::to_string(data_size));
  }
  if (data_size > data_end) {
    throw Error(what + ": " + std::to_string(data_size - data_end) + " bytes after the last tensor");
  }
  file.data.resize(static_cast<std::size_t>(data_size));
  if (data_size != 0 && std::fread(file.data.data(), 1, file.data.size(), f) != file.data.size()) {
    throw Error(what + ": reading the tensors failed");
  }
  for (const auto& [name, t] : file.tensors) {
    const auto crc = file.metadata.find("crc32." + name);
    if (crc == file.metadata.end()) continue;
    const std::string got = crc32_hex(crc32(0, file.bytes_of(t), t.end - t.begin));
    if (got != crc->second) {
      throw Error(what + ": tensor '" + name + "' is corrupted (crc32 " + got + ", the file says " + crc->second + ")");
    }
  }
  return file;
}

}  // namespace ekv
