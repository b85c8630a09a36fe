#pragma once
// What the fuzz targets share: a reader of their input bytes, front to back (so that the
// seed writer, make_seeds.cpp, lays an input out in the order the target reads it), the
// configs of the caches they make, and the temporary file the cache file target loads.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ekv/cache/kv_cache_config.hpp"

namespace ekv::fuzz {

// Reads a fuzz input from the front; past its end every read gives 0.
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  std::uint8_t byte() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  std::int8_t small() { return static_cast<std::int8_t>(byte()); }
  std::int64_t int64() {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{byte()} << (8 * i);
    return static_cast<std::int64_t>(v);
  }
  // 0 to 127 from one byte below 0x80 (every shape a small cache needs), else the next
  // 8 bytes as any int64: extremes for the checks, small values for the seeds.
  std::int64_t dim() {
    const std::uint8_t b = byte();
    return b < 0x80 ? b : int64();
  }
  // one of n choices
  int pick(int n) { return byte() % n; }

 private:
  const std::uint8_t* p_;
  std::size_t n_;
};

// The c_api_tensor target's cache: every size small, so that any descriptor the checks
// accept describes a few KB; kv_type and anchor_type come from the input.
inline KVCacheConfig tensor_fuzz_config(DType kv_type, AnchorKind anchor) {
  KVCacheConfig c;
  c.layer_num = 2;
  c.kv_head_num = 2;
  c.q_head_num = 4;
  c.head_dim = 64;
  c.block_len = 8;
  c.anchor_num = 2;
  c.anchor_type = anchor;
  c.kv_type = kv_type;
  c.max_block_num = 8;
  c.max_batch_size = 2;
  c.max_thread_num = 1;
  return c;
}

// The kv_cache_file target's cache where the file's config is not one it makes: dumps
// of it are 3 KB.
inline KVCacheConfig file_fuzz_config() {
  KVCacheConfig c;
  c.layer_num = 1;
  c.kv_head_num = 1;
  c.q_head_num = 2;
  c.head_dim = 64;
  c.block_len = 2;
  c.max_block_num = 3;
  c.max_batch_size = 2;
  c.max_thread_num = 1;
  return c;
}

// A file of this process's own under $TMPDIR (or /tmp), removed at exit: read_safetensors
// reads a path, and libFuzzer's -fork and -jobs run several processes at once.
class TemporaryFile {
 public:
  TemporaryFile() {
    const char* dir = std::getenv("TMPDIR");
    path_ = std::string(dir != nullptr && *dir != '\0' ? dir : "/tmp") + "/ekv-fuzz-XXXXXX";
    fd_ = ::mkstemp(path_.data());
    if (fd_ < 0) {
      std::perror("ekv fuzz: mkstemp");
      std::abort();
    }
  }
  TemporaryFile(const TemporaryFile&) = delete;  // one owner removes the file
  TemporaryFile& operator=(const TemporaryFile&) = delete;
  ~TemporaryFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  // Replaces the file's bytes with [data, data + size).
  const std::string& write(const std::uint8_t* data, std::size_t size) {
    if (::ftruncate(fd_, 0) != 0) std::abort();
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) std::abort();
      done += static_cast<std::size_t>(n);
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace ekv::fuzz
