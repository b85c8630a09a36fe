#pragma once
// The KV cache file: what dump_kvcache writes and load_kvcache reads, for every backend,
// and the memory report (kv_cache_memory) that the same sizes give.
// A safetensors file (cache/safetensors.hpp) holding, with C = config:
//   layer.<i>.k, layer.<i>.v     kv_type [C.max_block_num][C.kv_head_num][C.block_len][C.head_dim]
//                                (quantized kv_type: U8 [C.max_block_num][C.block_bytes()], each
//                                block's codes then scales, kv_cache_config.hpp's layout)
//   layer.<i>.anchors            C.value_type() [C.max_block_num][C.kv_head_num][C.anchor_values()]
//   layer.<i>.importance         F32     [C.max_block_num][C.kv_head_num][C.block_len]
//   lengths                      I32     [C.layer_num][C.max_batch_size]  tokens per layer and sequence
//   block_table                  I32     [C.max_batch_size][C.max_seq_block_num()]  -1 where none
//   free_list                    I32     [free blocks]  the allocator's free stack, top last
// and the metadata format = "ekv-kvcache", format_version = "1", config = to_string(C),
// ekv_version, and crc32.<tensor> for every tensor.

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "ekv/cache/block_allocator.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/safetensors.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/version.hpp"

namespace ekv {

inline constexpr const char* kKVCacheFileFormat = "ekv-kvcache";
inline constexpr int kKVCacheFileVersion = 1;

inline const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "F32";
    case DType::kFloat16: return "F16";
    case DType::kBFloat16: return "BF16";
    case DType::kFloat8E4M3: return "F8_E4M3";
    case DType::kQ8_0:
    case DType::kQ4_0: return "U8";  // a block's bytes
  }
  return "invalid";
}

// The file's dtype and shape of a layer's K (or V) pool.
inline const char* kv_pool_file_dtype(const KVCacheConfig& c) {
  return c.quantized() ? "U8" : safetensors_dtype(c.kv_type);
}
inline std::vector<std::int64_t> kv_pool_file_shape(const KVCacheConfig& c) {
  if (c.quantized()) return {c.max_block_num, static_cast<std::int64_t>(c.block_bytes())};
  return {c.max_block_num, c.kv_head_num, c.block_len, c.head_dim};
}

// One layer's pools as the file lays them out: host memory, or device memory for a
// write_kv_cache_file given copy_to_host.
struct KVCacheLayerBytes {
  const void* k = nullptr;
  const void* v = nullptr;
  const void* anchors = nullptr;
  const void* importance = nullptr;
};

// Bytes of one layer's K (or V), anchors and importance.
struct KVCacheLayerSizes {
  std::size_t kv = 0, anchors = 0, importance = 0;
  explicit KVCacheLayerSizes(const KVCacheConfig& c)
      : kv(static_cast<std::size_t>(c.max_block_num) * c.block_bytes()),
        anchors(std::size_t{1} * c.max_block_num * c.kv_head_num * c.anchor_values() * dtype_size(c.value_type())),
        importance(std::size_t{1} * c.max_block_num * c.kv_head_num * c.block_len * sizeof(float)) {}
};

// What a cache holds and uses, in bytes and blocks.
struct KVCacheMemory {
  std::size_t bytes_per_layer = 0;  // K, V, anchors and importance of one layer's pool
  std::size_t bytes_per_token = 0;  // K and V of one token, all layers and kv heads (scales included)
  std::size_t total_bytes = 0;      // every layer's pool, plus the block tables
  int blocks_used = 0;
  int blocks_free = 0;
};

inline KVCacheMemory kv_cache_memory(const KVCacheConfig& c, const BlockAllocator& allocator) {
  const KVCacheLayerSizes size(c);
  KVCacheMemory m;
  m.bytes_per_layer = 2 * size.kv + size.anchors + size.importance;
  m.bytes_per_token = 2 * std::size_t{1} * c.layer_num * c.kv_head_num * c.row_bytes();
  m.total_bytes = m.bytes_per_layer * c.layer_num + allocator.tables().size() * sizeof(std::int32_t);
  m.blocks_used = allocator.used_blocks();
  m.blocks_free = allocator.free_blocks();
  return m;
}

// Copies n bytes from a layer's pool (device memory, say) to host memory, and returns
// once they are there.
using CopyToHost = std::function<void(void* dst, const void* src, std::size_t n)>;

// Writes the file atomically (write_safetensors: streamed, checksummed on `threads`
// threads, 0 for one per core). lengths: int32 [layer_num][max_batch_size]. Where
// copy_to_host is given, the layers' pointers are where it copies from (a GPU's pools),
// through `staging` (write_safetensors'; pinned memory for device copies); otherwise
// they are host memory.
inline void write_kv_cache_file(const std::string& path, const KVCacheConfig& c,
                                const std::vector<KVCacheLayerBytes>& layers, const std::vector<std::int32_t>& lengths,
                                const BlockAllocator& allocator, unsigned threads = 0,
                                const CopyToHost& copy_to_host = {}, unsigned char* staging = nullptr,
                                std::size_t staging_bytes = 0) {
  const KVCacheLayerSizes size(c);
  const std::int64_t blocks = c.max_block_num, heads = c.kv_head_num;
  const char* kv_dtype = kv_pool_file_dtype(c);
  const char* dtype = safetensors_dtype(c.value_type());
  const std::vector<std::int64_t> kv_shape = kv_pool_file_shape(c);
  std::vector<SafetensorsEntry> tensors;
  const auto pool = [&](const std::string& name, const char* type, std::vector<std::int64_t> shape, const void* data,
                        std::size_t bytes) {
    SafetensorsEntry e{name, type, std::move(shape), data, bytes};
    if (copy_to_host) {
      e.data = nullptr;
      e.fill = [&copy_to_host, data](void* dst, std::size_t offset, std::size_t n) {
        copy_to_host(dst, static_cast<const unsigned char*>(data) + offset, n);
      };
    }
    tensors.push_back(std::move(e));
  };
  for (int i = 0; i < c.layer_num; ++i) {
    const std::string p = "layer." + std::to_string(i) + ".";
    pool(p + "k", kv_dtype, kv_shape, layers[i].k, size.kv);
    pool(p + "v", kv_dtype, kv_shape, layers[i].v, size.kv);
    pool(p + "anchors", dtype, {blocks, heads, c.anchor_values()}, layers[i].anchors, size.anchors);
    pool(p + "importance", "F32", {blocks, heads, c.block_len}, layers[i].importance, size.importance);
  }
  tensors.push_back({"lengths", "I32", {c.layer_num, c.max_batch_size}, lengths.data(),
                     lengths.size() * sizeof(std::int32_t)});
  tensors.push_back({"block_table", "I32", {c.max_batch_size, c.max_seq_block_num()}, allocator.tables().data(),
                     allocator.tables().size() * sizeof(std::int32_t)});
  tensors.push_back({"free_list", "I32", {static_cast<std::int64_t>(allocator.free_list().size())},
                     allocator.free_list().data(), allocator.free_list().size() * sizeof(std::int32_t)});
  write_safetensors(path, tensors,
                    {{"format", kKVCacheFileFormat},
                     {"format_version", std::to_string(kKVCacheFileVersion)},
                     {"config", to_string(c)},
                     {"ekv_version", kVersion}},
                    threads, staging, staging_bytes);
}

// A file read and checked: its layers point into file.data.
struct KVCacheFileContents {
  SafetensorsFile file;
  std::vector<KVCacheLayerBytes> layers;
  std::vector<std::int32_t> lengths;  // [layer_num][max_batch_size]
  BlockAllocator allocator;
};

// Reads `path` and checks everything a load needs before it touches a cache: the file's
// length and CRC-32s (read_safetensors, on `threads` threads, the tensors a sink takes
// sent to it; their pointers in `layers` then point at nothing), its format and version, its config against `c`,
// every tensor's name, dtype and shape, and the block tables' consistency (`current` gives
// the allocator's shape). Throws ekv::Error("<who>: <path>: ...") saying which.
inline KVCacheFileContents read_kv_cache_file(const std::string& path, const KVCacheConfig& c,
                                              const BlockAllocator& current, const std::string& who,
                                              unsigned threads = 0, const SafetensorsSink* sink = nullptr) {
  KVCacheFileContents out{read_safetensors(path, threads, sink), {}, {}, current};
  const SafetensorsFile& file = out.file;
  const std::string what = who + ": " + path;
  const auto meta = [&](const char* key) {
    const auto it = file.metadata.find(key);
    return it == file.metadata.end() ? std::string() : it->second;
  };
  if (meta("format") != kKVCacheFileFormat) {
    throw Error(what + ": not an ekv KV cache file (metadata format '" + meta("format") + "', expected '" +
                kKVCacheFileFormat + "')");
  }
  if (meta("format_version") != std::to_string(kKVCacheFileVersion)) {
    throw Error(what + ": format version '" + meta("format_version") + "'; this ekv reads version " +
                std::to_string(kKVCacheFileVersion));
  }
  if (meta("config") != to_string(c)) {
    throw Error(what + ": the file's config does not match this cache's: file '" + meta("config") + "', cache '" +
                to_string(c) + "'");
  }
  const auto tensor = [&](const std::string& name, const std::string& dtype, const std::vector<std::int64_t>& shape,
                          std::size_t bytes) -> const unsigned char* {
    const auto it = file.tensors.find(name);
    if (it == file.tensors.end()) throw Error(what + ": no tensor '" + name + "'");
    const SafetensorsTensor& t = it->second;
    if (t.dtype != dtype || t.shape != shape || t.end - t.begin != bytes) {
      throw Error(what + ": tensor '" + name + "' is " + t.dtype + " of " + std::to_string(t.end - t.begin) +
                  " bytes; this cache needs " + dtype + " of " + std::to_string(bytes));
    }
    return file.bytes_of(t);
  };
  const auto ints = [](const unsigned char* p, std::size_t n) {
    std::vector<std::int32_t> v(n);
    if (n != 0) std::memcpy(v.data(), p, n * sizeof(std::int32_t));
    return v;
  };
  const KVCacheLayerSizes size(c);
  const std::int64_t blocks = c.max_block_num, heads = c.kv_head_num;
  const char* kv_dtype = kv_pool_file_dtype(c);
  const char* dtype = safetensors_dtype(c.value_type());
  const std::vector<std::int64_t> kv_shape = kv_pool_file_shape(c);
  for (int i = 0; i < c.layer_num; ++i) {
    const std::string p = "layer." + std::to_string(i) + ".";
    out.layers.push_back({tensor(p + "k", kv_dtype, kv_shape, size.kv),
                          tensor(p + "v", kv_dtype, kv_shape, size.kv),
                          tensor(p + "anchors", dtype, {blocks, heads, c.anchor_values()}, size.anchors),
                          tensor(p + "importance", "F32", {blocks, heads, c.block_len}, size.importance)});
  }
  const std::size_t rows = std::size_t{1} * c.layer_num * c.max_batch_size;
  out.lengths = ints(tensor("lengths", "I32", {c.layer_num, c.max_batch_size}, rows * sizeof(std::int32_t)), rows);
  const std::size_t table_size = current.tables().size();
  std::vector<std::int32_t> tables =
      ints(tensor("block_table", "I32", {c.max_batch_size, c.max_seq_block_num()}, table_size * sizeof(std::int32_t)),
           table_size);
  const auto free_it = file.tensors.find("free_list");
  if (free_it == file.tensors.end() || free_it->second.shape.size() != 1) {
    throw Error(what + ": no one-dimensional tensor 'free_list'");
  }
  const auto num_free = static_cast<std::size_t>(free_it->second.shape[0]);
  std::vector<std::int32_t> free = ints(
      tensor("free_list", "I32", {static_cast<std::int64_t>(num_free)}, num_free * sizeof(std::int32_t)), num_free);
  // a sequence's blocks are its longest layer's
  std::vector<std::int32_t> seq_lengths(c.max_batch_size, 0);
  for (std::size_t r = 0; r < rows; ++r) {
    if (out.lengths[r] < 0) throw Error(what + ": a negative token count");
    std::int32_t& longest = seq_lengths[r % c.max_batch_size];
    longest = std::max(longest, out.lengths[r]);
  }
  try {
    out.allocator.restore(std::move(tables), seq_lengths, std::move(free));
  } catch (const Error& e) {
    throw Error(what + ": inconsistent block tables (" + e.what() + ")");
  }
  return out;
}

}  // namespace ekv
