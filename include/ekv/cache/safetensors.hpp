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
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ekv/core/allocation.hpp"
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

namespace detail {

// a(x) b(x) modulo the CRC-32 polynomial, both reflected (bit 31 is x^0).
inline std::uint32_t crc32_multiply(std::uint32_t a, std::uint32_t b) {
  std::uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1u) ? (b >> 1) ^ 0xEDB88320u : b >> 1;
  }
  return p;
}

// x^(8 n) modulo the polynomial: n bytes of zeros, from the powers x^(2^k).
inline std::uint32_t crc32_shift(std::uint64_t n) {
  static const auto powers = [] {
    std::array<std::uint32_t, 64> t{};
    std::uint32_t p = 1u << 30;  // x^1
    for (std::uint32_t& x : t) {
      x = p;
      p = crc32_multiply(p, p);
    }
    return t;
  }();
  std::uint32_t p = 1u << 31;  // x^0
  for (int k = 3; n != 0; n >>= 1, ++k) {
    if (n & 1u) p = crc32_multiply(powers[k], p);
  }
  return p;
}

}  // namespace detail

// The CRC-32 of A followed by B from crc32(0, A), crc32(0, B) and B's length (zlib's
// crc32_combine).
inline std::uint32_t crc32_combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t bytes_b) {
  return detail::crc32_multiply(detail::crc32_shift(bytes_b), crc_a) ^ crc_b;
}

namespace detail {

// Worker threads computing the CRC-32s of byte pieces handed to them while the caller
// goes on (reads or writes the next bytes). Pieces are numbered in the order submitted.
class CrcPool {
 public:
  explicit CrcPool(unsigned threads) {
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned t = 0; t < threads; ++t) workers_.emplace_back([this] { work(); });
  }
  CrcPool(const CrcPool&) = delete;
  CrcPool& operator=(const CrcPool&) = delete;
  ~CrcPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }
  std::size_t submit(const void* data, std::size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    pieces_.push_back({static_cast<const unsigned char*>(data), bytes, 0, false});
    wake_.notify_one();
    return pieces_.size() - 1;
  }
  // Waits for piece i (and not for the others).
  void wait(std::size_t i) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pieces_[i].done; });
  }
  void wait_all() {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return finished_ == pieces_.size(); });
  }
  std::uint32_t crc(std::size_t i) const { return pieces_[i].crc; }  // after wait
  std::size_t bytes(std::size_t i) const { return pieces_[i].bytes; }

 private:
  struct Piece {
    const unsigned char* data;
    std::size_t bytes;
    std::uint32_t crc;
    bool done;
  };
  void work() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || next_ < pieces_.size(); });
      if (stop_) return;  // after wait_all, or on an error: what is left is not wanted
      Piece& p = pieces_[next_++];          // a deque: stays where it is as pieces are added
      lock.unlock();
      const std::uint32_t c = crc32(0, p.data, p.bytes);
      lock.lock();
      p.crc = c;
      p.done = true;
      ++finished_;
      done_.notify_all();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::deque<Piece> pieces_;
  std::size_t next_ = 0, finished_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

inline constexpr std::size_t kCrcPiece = std::size_t{8} << 20;  // bytes a worker checks at a time
inline constexpr std::size_t kIoChunk = std::size_t{64} << 20;  // bytes per read or write call

// The CRC-32 of pieces `ids` of a pool, in order, once they are done.
inline std::uint32_t combine_pieces(CrcPool& pool, const std::vector<std::size_t>& ids) {
  std::uint32_t c = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    pool.wait(ids[i]);
    c = i == 0 ? pool.crc(ids[i]) : crc32_combine(c, pool.crc(ids[i]), pool.bytes(ids[i]));
  }
  return c;
}

// Hands bytes [p, p + n) to the pool in kCrcPiece pieces; their ids go to `ids`, and to
// `also` where given.
inline void submit_pieces(CrcPool& pool, const unsigned char* p, std::size_t n, std::vector<std::size_t>& ids,
                          std::vector<std::size_t>* also = nullptr) {
  for (std::size_t at = 0; at < n; at += kCrcPiece) {
    ids.push_back(pool.submit(p + at, std::min(kCrcPiece, n - at)));
    if (also != nullptr) also->push_back(ids.back());
  }
}

// Two halves of a staging buffer, used in turn: take() returns the next one once the
// checksum pieces still reading it are done; busy() collects the pieces that will read it.
class StagingHalves {
 public:
  StagingHalves(unsigned char* base, std::size_t half) : base_(base), half_(half) {}
  std::size_t half() const { return half_; }
  unsigned char* take(CrcPool& pool) {
    at_ ^= 1;
    for (std::size_t id : busy_[at_]) pool.wait(id);
    busy_[at_].clear();
    return base_ + at_ * half_;
  }
  std::vector<std::size_t>& busy() { return busy_[at_]; }

 private:
  unsigned char* base_;
  std::size_t half_;
  std::vector<std::size_t> busy_[2];
  int at_ = 1;
};

}  // namespace detail

inline std::string crc32_hex(std::uint32_t crc) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

// One tensor to write: dtype as safetensors names it ("F32", "F16", "BF16", "I32", ...).
// Its bytes are at `data` in host memory, or, where data is null, `fill` copies bytes
// [offset, offset + n) of the tensor to host memory at dst (a device-to-host copy, say),
// one chunk of at most 64 MiB at a time.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::size_t bytes = 0;
  std::function<void(void* dst, std::size_t offset, std::size_t n)> fill = {};
};

// Bytes in host memory, left uninitialized (a file's data is read into them); from 2 MiB
// on aligned to 2 MiB and offered to the kernel as huge pages, so that reading a file
// into them faults a page per 2 MiB rather than per 4 KiB where the system allows.
class HostBytes {
 public:
  HostBytes() = default;
  explicit HostBytes(std::size_t n) : n_(n) {
    if (n == 0) return;
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    void* p = nullptr;
    if (detail::allocation_fails() || posix_memalign(&p, n >= kHuge ? kHuge : 64, n) != 0) {
      throw Error("HostBytes: cannot allocate " + std::to_string(n) + " bytes of host memory",
                  cudaErrorMemoryAllocation);
    }
#ifdef MADV_HUGEPAGE
    if (n >= kHuge) (void)madvise(p, n, MADV_HUGEPAGE);  // a hint: fine where refused
#endif
    p_.reset(static_cast<unsigned char*>(p));
  }
  unsigned char* data() { return p_.get(); }
  const unsigned char* data() const { return p_.get(); }
  std::size_t size() const { return n_; }

 private:
  struct Free {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  std::unique_ptr<unsigned char, Free> p_;
  std::size_t n_ = 0;
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
  HostBytes data;  // everything after the header
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
          // four hex digits exactly: std::stoul would throw std::invalid_argument for none,
          // and take a sign, spaces or fewer digits (tests/fuzz's kv_cache_file)
          unsigned code = 0;
          for (int k = 0; k < 4; ++k, ++i_) {
            const char h = s_[i_];
            const int digit = h >= '0' && h <= '9'   ? h - '0'
                              : h >= 'a' && h <= 'f' ? h - 'a' + 10
                              : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                     : -1;
            if (digit < 0) fail("a \\u escape that is not 4 hex digits");
            code = code * 16 + static_cast<unsigned>(digit);
          }
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

namespace detail {

inline std::string safetensors_header(const std::vector<SafetensorsEntry>& tensors,
                                      const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  std::size_t offset = 0;
  for (const SafetensorsEntry& t : tensors) {
    std::string shape;
    for (std::int64_t d : t.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += json_string(t.name) + ":{\"dtype\":" + json_string(t.dtype) + ",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes) + "]},";
    offset += t.bytes;
  }
  header += "\"__metadata__\":{";
  bool first = true;
  for (const auto& [k, v] : metadata) {
    header += (first ? "" : ",") + json_string(k) + ":" + json_string(v);
    first = false;
  }
  header += "}}";
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

}  // namespace detail

// Writes the tensors in the order given, with `metadata` plus a crc32.<name> per tensor,
// streaming: 64 MiB write() calls, while `threads` threads (0: one per core) checksum
// what was written; the header, whose CRCs have a fixed width, is written first with
// placeholders and again at the end. Tensors given by `fill` pass through `staging`
// (two halves of staging_bytes / 2 each, pinned memory for a device's copies; null: a
// buffer of 2 x 64 MiB allocated here). Throws ekv::Error with the path and the system's
// reason where a write fails; the file at `path` is then untouched (the temporary one
// removed).
inline void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                              std::map<std::string, std::string> metadata, unsigned threads = 0,
                              unsigned char* staging = nullptr, std::size_t staging_bytes = 0) {
  for (const SafetensorsEntry& t : tensors) metadata["crc32." + t.name] = "00000000";
  const std::string placeholder = detail::safetensors_header(tensors, metadata);

  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error("write_safetensors: cannot create " + temporary + ": " + std::strerror(errno));
  struct Temporary {  // closed and removed on every way out but the rename: a failed write, a fill's
    int fd;           // error, a buffer or thread that could not be had
    const std::string& name;
    bool renamed = false;
    ~Temporary() {
      if (fd >= 0) ::close(fd);
      if (!renamed) std::remove(name.c_str());
    }
  } guard{fd, temporary};
  const auto failed = [&](const char* what) {
    const std::string why = errno != 0 ? std::strerror(errno) : "short write";
    throw Error("write_safetensors: " + std::string(what) + " " + temporary + " failed: " + why);
  };
  const auto write_at = [&](const void* data, std::size_t bytes, std::int64_t at, const char* what) {
    const auto* p = static_cast<const unsigned char*>(data);
    while (bytes > 0) {
      errno = 0;
      const ssize_t n = at < 0 ? ::write(fd, p, bytes) : ::pwrite(fd, p, bytes, at);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        failed(what);
      }
      p += n, bytes -= static_cast<std::size_t>(n);
      if (at >= 0) at += n;
    }
  };
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(std::uint64_t{placeholder.size()} >> (8 * i));
  write_at(length, 8, -1, "writing the header of");
  write_at(placeholder.data(), placeholder.size(), -1, "writing the header of");

  HostBytes own;
  if (staging == nullptr || staging_bytes < 2) {
    bool fills = false;
    for (const SafetensorsEntry& t : tensors) fills = fills || (t.data == nullptr && t.bytes != 0);
    own = HostBytes(fills ? 2 * detail::kIoChunk : 0);
    staging = own.data();
    staging_bytes = own.size();
  }
  std::vector<std::vector<std::size_t>> ids(tensors.size());
  detail::CrcPool pool(threads);  // after the buffers: stopped before they go
  detail::StagingHalves halves(staging, staging_bytes / 2);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsEntry& t = tensors[i];
    if (t.data == nullptr && t.bytes != 0 && !t.fill) {
      throw Error("write_safetensors: tensor '" + t.name + "' has neither data nor fill");
    }
    const std::size_t chunk = t.data != nullptr ? detail::kIoChunk : std::min(detail::kIoChunk, halves.half());
    for (std::size_t off = 0; off < t.bytes; off += chunk) {
      const std::size_t n = std::min(chunk, t.bytes - off);
      const unsigned char* src = static_cast<const unsigned char*>(t.data) + off;
      if (t.data == nullptr) {
        unsigned char* dst = halves.take(pool);
        t.fill(dst, off, n);  // its own error passes through, the temporary file gone
        src = dst;
      }
      detail::submit_pieces(pool, src, n, ids[i], t.data == nullptr ? &halves.busy() : nullptr);
      write_at(src, n, -1, "writing");
    }
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    metadata["crc32." + tensors[i].name] = crc32_hex(detail::combine_pieces(pool, ids[i]));
  }
  const std::string header = detail::safetensors_header(tensors, metadata);
  if (header.size() != placeholder.size()) failed("sizing the header of");  // CRCs are 8 digits: never
  write_at(header.data(), header.size(), 8, "writing the header of");
  if (::fsync(fd) != 0) failed("syncing");
  guard.fd = -1;
  if (::close(fd) != 0) {
    throw Error("write_safetensors: closing " + temporary + " failed: " + std::strerror(errno));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    throw Error("write_safetensors: renaming " + temporary + " to " + path + " failed: " + std::strerror(errno));
  }
  guard.renamed = true;
}

// Where read_safetensors sends the tensors that `take` accepts (given each tensor's name
// and header entry, before any data is read), instead of keeping them in
// SafetensorsFile::data (their bytes there are left unset): each is read into one half
// of `staging` (pinned memory for a device's copies) at a time, checksummed from there,
// and handed to `put` (the tensor's name, the offset within it, the bytes, their count),
// which must be done with the bytes when it returns. What put received is the file's
// only where read_safetensors then returns without throwing.
struct SafetensorsSink {
  std::function<bool(const std::string& name, const SafetensorsTensor& tensor)> take;
  std::function<void(const std::string& name, std::size_t offset, const unsigned char* bytes, std::size_t n)> put;
  unsigned char* staging = nullptr;
  std::size_t staging_bytes = 0;
};

// Reads and checks a whole file: the header's length within the file, the header's JSON,
// every tensor's bytes within the data and the data exactly as long as the tensors (a
// truncated or extended file fails), and every crc32.<name> the metadata holds, which
// `threads` threads (0: one per core) compute while the data is read in 64 MiB calls.
// A sink, if given, receives the tensors it takes (SafetensorsSink). Throws ekv::Error
// naming the path and what is wrong.
inline SafetensorsFile read_safetensors(const std::string& path, unsigned threads = 0,
                                        const SafetensorsSink* sink = nullptr) {
  const std::string what = "read_safetensors: " + path;
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) ::close(fd);
    }
  } file_handle{::open(path.c_str(), O_RDONLY)};
  const int fd = file_handle.fd;
  if (fd < 0) throw Error("read_safetensors: cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw Error(what + ": cannot size");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  // bytes [at, at + n) of the file into dst; false where the file ends first
  const auto read_at = [&](void* dst, std::size_t n, std::uint64_t at) {
    auto* p = static_cast<unsigned char*>(dst);
    while (n > 0) {
      const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw Error(what + ": reading failed: " + std::strerror(errno));
      if (got == 0) return false;
      p += got, n -= static_cast<std::size_t>(got), at += static_cast<std::uint64_t>(got);
    }
    return true;
  };
  unsigned char length[8];
  if (size < 8 || !read_at(length, 8, 0)) {
    throw Error(what + ": truncated: " + std::to_string(size) + " bytes, less than the header's length");
  }
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= std::uint64_t{length[i]} << (8 * i);
  if (header_len > size - 8) {
    // a header length past the file: truncated if what follows looks like a header (or
    // nothing follows)
    unsigned char first = 0;
    const bool any = size > 8 && read_at(&first, 1, 8);
    if ((!any || first == '{') && header_len < (std::uint64_t{1} << 30)) {
      throw Error(what + ": truncated: the header needs " + std::to_string(header_len) + " bytes, the file has " +
                  std::to_string(size - 8) + " after the length");
    }
    throw Error(what + ": not a safetensors file (its first 8 bytes are not a header length)");
  }
  std::string header(static_cast<std::size_t>(header_len), '\0');
  if (!read_at(header.data(), header.size(), 8)) throw Error(what + ": reading the header failed");
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
  // tensor by tensor in the file's order, 64 MiB reads, each read's pieces checksummed
  // by the pool while the next is read
  std::vector<std::pair<std::size_t, const std::string*>> order;
  for (const auto& [name, t] : file.tensors) order.push_back({t.begin, &name});
  std::sort(order.begin(), order.end());
  file.data = HostBytes(static_cast<std::size_t>(data_size));  // untouched where a sink takes the tensor
  if (sink != nullptr && (sink->staging == nullptr || sink->staging_bytes < 2 || !sink->take || !sink->put)) {
    throw Error(what + ": a SafetensorsSink needs take, put and staging of at least 2 bytes");
  }
  std::map<std::string, std::vector<std::size_t>> ids;
  detail::CrcPool pool(threads);  // after file: stopped before its data goes
  detail::StagingHalves halves(sink != nullptr ? sink->staging : nullptr,
                               sink != nullptr ? sink->staging_bytes / 2 : 0);
  for (const auto& [begin, name] : order) {
    const SafetensorsTensor& t = file.tensors.at(*name);
    const bool checked = file.metadata.count("crc32." + *name) != 0;
    const bool taken = sink != nullptr && sink->take(*name, t);
    const std::size_t chunk = taken ? std::min(halves.half(), detail::kIoChunk) : detail::kIoChunk;
    for (std::size_t off = 0; off < t.end - t.begin; off += chunk) {
      const std::size_t n = std::min(chunk, t.end - t.begin - off);
      unsigned char* dst = taken ? halves.take(pool) : file.data.data() + t.begin + off;
      if (!read_at(dst, n, 8 + header_len + t.begin + off)) throw Error(what + ": reading the tensors failed");
      if (checked) detail::submit_pieces(pool, dst, n, ids[*name], taken ? &halves.busy() : nullptr);
      if (taken) sink->put(*name, off, dst, n);
    }
  }
  for (const auto& [name, t] : file.tensors) {
    const auto crc = file.metadata.find("crc32." + name);
    if (crc == file.metadata.end()) continue;
    const std::string got = crc32_hex(detail::combine_pieces(pool, ids[name]));
    if (got != crc->second) {
      throw Error(what + ": tensor '" + name + "' is corrupted (crc32 " + got + ", the file says " + crc->second + ")");
    }
  }
  return file;
}

}  // namespace ekv
