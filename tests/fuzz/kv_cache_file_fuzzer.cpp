// The cache file's host load path on any bytes: read_safetensors (header length, JSON
// header, offsets, CRC-32s), then HostKVCache::load_kvcache (format, version, config,
// every tensor's dtype and shape, the block tables' consistency, the copy into the pools).
// The cache is of the file's own config where that parses, validates and is small (so
// that the checks past the config are reached for every kind of cache), else
// file_fuzz_config(). Whatever the bytes, the load succeeds or throws ekv::Error; a load
// that succeeds leaves a cache whose allocator accounts for every block.

#include <cstdint>
#include <cstdlib>
#include <string>

#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/safetensors.hpp"
#include "ekv/core/error.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "fuzz/fuzz_input.hpp"

namespace {

// Above this a config's pools are not made: the fuzzer's memory stays small.
constexpr std::size_t kMostPoolBytes = std::size_t{1} << 20;

ekv::KVCacheConfig config_of(const ekv::SafetensorsFile& file) {
  const auto it = file.metadata.find("config");
  if (it == file.metadata.end()) return ekv::fuzz::file_fuzz_config();
  try {
    const ekv::KVCacheConfig c = ekv::parse_kv_cache_config(it->second);
    if (!c.validate() || c.max_thread_num > 2) return ekv::fuzz::file_fuzz_config();
    const ekv::KVCacheLayerSizes size(c);
    const std::size_t layer = 2 * size.kv + size.anchors + size.importance;
    if (layer > kMostPoolBytes / static_cast<std::size_t>(c.layer_num)) return ekv::fuzz::file_fuzz_config();
    return c;
  } catch (const ekv::Error&) {
    return ekv::fuzz::file_fuzz_config();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static ekv::fuzz::TemporaryFile file;
  const std::string& path = file.write(data, size);
  ekv::KVCacheConfig config = ekv::fuzz::file_fuzz_config();
  try {
    config = config_of(ekv::read_safetensors(path, 1));
  } catch (const ekv::Error&) {
    return 0;  // load_kvcache reads the same way and would stop at the same place
  }
  ekv::HostKVCache cache(config);
  try {
    cache.load_kvcache(path);
  } catch (const ekv::Error&) {
    return 0;
  }
  const ekv::KVCacheMemory m = cache.memory();
  if (m.blocks_used + m.blocks_free != config.max_block_num) std::abort();
  return 0;
}
