// Writes the fuzz targets' seed corpora, a few valid and near-valid inputs each, into
// DIR/<target>/ (tests/fuzz/corpus is the committed one): cache dumps of two small configs,
// with and without CRC-32s, and cut or emptied ones; config texts; ekv-bench command
// lines; and cache calls in c_api_tensor_fuzzer.cpp's layout. Deterministic: the same
// files on every run. Usage: ekv_fuzz_seeds DIR

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ekv/c_api.h"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/safetensors.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "fuzz/fuzz_input.hpp"
#include "fuzz/tensor_calls.hpp"

namespace {

using Bytes = std::vector<std::uint8_t>;

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw ekv::Error("ekv_fuzz_seeds: cannot write " + path);
}

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string directory(const std::string& root, const std::string& target) {
  const std::string dir = root + "/" + target;
  ::mkdir(root.c_str(), 0755);
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

// A cache of `c` whose sequence 0 holds lengths[0] tokens of a pattern in every layer,
// and whose other sequences hold lengths[s] tokens of zeros (their lengths set directly).
ekv::HostKVCache filled_cache(const ekv::KVCacheConfig& c, const std::vector<int>& lengths) {
  ekv::HostKVCache cache(c);
  std::vector<__half> k(static_cast<std::size_t>(lengths[0]) * c.kv_head_num * c.head_dim);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = __float2half(static_cast<float>(i * 7 % 19) / 19.0f);
  const auto view = ekv::TensorView::of(k.data(), {1, lengths[0], c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost);
  for (int layer = 0; layer < c.layer_num; ++layer) cache.append(layer, view, view);
  for (std::size_t s = 1; s < lengths.size(); ++s) cache.update_cache_total_len(lengths[s], static_cast<int>(s));
  return cache;
}

// The file at `path` rewritten without its crc32.<name> metadata: read_safetensors checks
// only the CRCs a file names, so mutations of the block tables reach restore().
Bytes without_crcs(const std::string& path) {
  const ekv::SafetensorsFile file = ekv::read_safetensors(path, 1);
  std::vector<std::pair<std::size_t, std::string>> order;
  for (const auto& [name, t] : file.tensors) order.push_back({t.begin, name});
  std::sort(order.begin(), order.end());
  std::vector<ekv::SafetensorsEntry> entries;
  for (const auto& [begin, name] : order) {
    const ekv::SafetensorsTensor& t = file.tensors.at(name);
    entries.push_back({name, t.dtype, t.shape, file.bytes_of(t), t.end - t.begin});
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [k, v] : file.metadata) {
    if (k.rfind("crc32.", 0) != 0) metadata[k] = v;
  }
  const std::string header = ekv::detail::safetensors_header(entries, metadata);
  Bytes out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(std::uint64_t{header.size()} >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  for (const ekv::SafetensorsEntry& e : entries) {
    const auto* p = static_cast<const std::uint8_t*>(e.data);
    out.insert(out.end(), p, p + e.bytes);
  }
  return out;
}

Bytes safetensors_of_header(const std::string& header) {
  Bytes out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(std::uint64_t{header.size()} >> (8 * i)));
  out.insert(out.end(), header.begin(), header.end());
  return out;
}

void cache_file_seeds(const std::string& root) {
  const std::string dir = directory(root, "kv_cache_file");
  ekv::KVCacheConfig dense = ekv::fuzz::file_fuzz_config();
  ekv::KVCacheConfig quantized = dense;
  quantized.kv_type = ekv::DType::kQ4_0;
  quantized.anchor_type = ekv::AnchorKind::kFixed;
  quantized.anchor_num = 2;
  quantized.retrieval_type = ekv::RetrievalType::kLayer;
  const struct {
    const char* name;
    ekv::KVCacheConfig config;
    std::vector<int> lengths;
  } dumps[] = {{"dense_fp16", dense, {3, 1}}, {"q4_0_fixed", quantized, {2, 2}}};
  for (const auto& d : dumps) {
    const std::string path = dir + "/" + d.name + ".safetensors";
    filled_cache(d.config, d.lengths).dump_kvcache(path);
    write_file(dir + "/" + d.name + "_no_crc.safetensors", without_crcs(path));
  }
  const Bytes whole = read_file(dir + "/dense_fp16.safetensors");
  write_file(dir + "/dense_fp16_cut.safetensors", Bytes(whole.begin(), whole.end() - 100));
  write_file(dir + "/empty_header.safetensors", safetensors_of_header("{}      "));
  write_file(dir + "/metadata_only.safetensors",
             safetensors_of_header("{\"__metadata__\":{\"format\":\"ekv-kvcache\",\"format_version\":\"1\","
                                   "\"config\":\"layer_num=1 kv_\\u0068ead_num=1\"}}"));
  // a regression: a \u escape without hex digits made std::stoul throw past ekv::Error
  write_file(dir + "/bad_escape.safetensors", safetensors_of_header("{\"aer_\\u}}}num\"}"));
  write_file(dir + "/one_tensor.safetensors",
             [] {
               Bytes b = safetensors_of_header("{\"free_list\":{\"dtype\":\"I32\",\"shape\":[1],"
                                               "\"data_offsets\":[0,4]}}");
               b.insert(b.end(), {0, 0, 0, 0});
               return b;
             }());
}

void config_seeds(const std::string& root) {
  const std::string dir = directory(root, "kv_cache_config");
  const std::pair<const char*, std::string> texts[] = {
      {"default", ekv::to_string(ekv::KVCacheConfig{})},
      {"file_fuzz", ekv::to_string(ekv::fuzz::file_fuzz_config())},
      {"older_spellings", "anchor_type=QUEST kv_type=FP16 retrieval_type=KVHEAD layer_num=32"},
      {"commas", "layer_num=2,kv_head_num=2,q_head_num=4,head_dim=64,kv_type=q4_0,anchor_type=fixed,anchor_num=4"},
      {"dynamic", "anchor_type=dynamic anchor_num=16 block_len=256 layer_step=4 layer_offset=3 token_step=8"},
      {"not_a_number", "layer_num=3x"},
      {"too_large", "max_block_num=99999999999"},
      {"no_value", "head_dim="},
      {"unknown_field", "heads=8"},
      {"bad_enum", "kv_type=int4"},
      // regressions: anchor_values() past an int, a layer's bytes past std::size_t
      {"fixed_anchors_overflow", "anchor_type=fixed anchor_num=20000000"},
      {"layer_bytes_overflow", "anchor_type=fixed anchor_num=16000000 max_block_num=2000000000 block_len=1 "
                               "kv_head_num=65535 q_head_num=65535"},
  };
  for (const auto& [name, text] : texts) write_file(dir + "/" + name + ".txt", Bytes(text.begin(), text.end()));
}

void cli_seeds(const std::string& root) {
  const std::string dir = directory(root, "bench_cli");
  const std::pair<const char*, std::vector<std::string>> lines[] = {
      {"cpu_small", {"--device", "cpu", "--seq", "1024", "--heads", "8", "--kv-heads", "2", "--dim", "64"}},
      {"older_cli", {"--seq=4096", "--compress=4", "--inner_loops=64", "--truncate=5", "--json", "--inference",
                     "--decode_tokens=16", "--no-graphs"}},
      {"quantized", {"--kv-dtype=q4_0", "--dtype=bf16", "--budget=8", "--anchor=BLOCK_MEAN", "--refresh=4"}},
      {"exclusive", {"--budget", "8", "--compress", "2"}},
      {"needles", {"--needles=3", "--block-len=16", "--seq=64", "--seed=18446744073709551615"}},
      {"help", {"--help"}},
      {"version", {"--version"}},
      {"unknown", {"--heads=0", "--frobnicate"}},
  };
  for (const auto& [name, args] : lines) {
    Bytes b;
    for (const std::string& a : args) {
      b.insert(b.end(), a.begin(), a.end());
      b.push_back(0);
    }
    write_file(dir + "/" + name + ".args", b);
  }
}

// c_api_tensor_fuzzer.cpp's layout
struct Seed {
  Bytes b;
  void byte(int v) { b.push_back(static_cast<std::uint8_t>(v)); }
  void call(ekv::fuzz::Call c) { byte(static_cast<int>(c)); }
  void dim(std::int64_t d) {
    if (d >= 0 && d < 0x80) return byte(static_cast<int>(d));
    byte(0x80);
    for (int i = 0; i < 8; ++i) byte(static_cast<int>(static_cast<std::uint64_t>(d) >> (8 * i)));
  }
  void tensor(int dtype, std::initializer_list<std::int64_t> shape, std::uint8_t flags = 0,
              int device = EKV_DEVICE_CPU, std::initializer_list<std::int64_t> strides = {}) {
    namespace flag = ekv::fuzz::tensor_flag;
    if (strides.size() != 0) flags |= flag::kStrides;
    byte(flags);
    if ((flags & flag::kRandomFill) != 0) byte(static_cast<int>(b.size()));
    byte(dtype);
    byte(device);
    byte(static_cast<int>(shape.size()));
    for (std::int64_t d : shape) dim(d);
    for (std::int64_t s : strides) dim(s);
  }
};

void tensor_seeds(const std::string& root) {
  namespace flag = ekv::fuzz::tensor_flag;
  using ekv::fuzz::Call;
  const std::string dir = directory(root, "c_api_tensor");
  const int h = 2, q = 4, d = 64, len = 8;  // tensor_fuzz_config()
  {  // fp16 QUEST: the calls a decode loop makes, every tensor as the cache needs it
    Seed s;
    s.byte(1);  // kKVCacheTypes[1]: float16
    s.byte(0);  // kAnchorKinds[0]: QUEST
    s.call(Call::kAppend);
    s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT16, {2, 11, h, d}, flag::kRandomFill);
    s.tensor(EKV_DTYPE_FLOAT16, {2, 11, h, d}, flag::kRandomFill);
    for (int pick : {-1, 1}) {
      s.call(Call::kAttn);
      s.byte(0), s.byte(0), s.byte(pick), s.byte(1), s.byte(1);
      s.tensor(EKV_DTYPE_FLOAT16, {2, q, d}, flag::kRandomFill);
      s.tensor(EKV_DTYPE_FLOAT16, {2, q, d});
      s.tensor(EKV_DTYPE_FLOAT32, {2, q});
    }
    s.call(Call::kGetKV);
    s.byte(0), s.byte(1);
    s.tensor(EKV_DTYPE_FLOAT16, {h, len, d});
    s.tensor(EKV_DTYPE_FLOAT16, {h, len, d});
    s.call(Call::kUpdateImportance);
    s.byte(1), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {h, len}, flag::kRandomFill);
    s.call(Call::kGetAnchor);
    s.byte(0), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT16, {h, 2 * d});
    s.call(Call::kUpdateTotalLen);
    s.byte(20), s.byte(0), s.byte(1);
    s.call(Call::kFreeSequence);
    s.byte(0);
    s.call(Call::kGetTotalLen);
    s.byte(1);
    write_file(dir + "/fp16_decode.bin", s.b);
  }
  {  // q8_0 DYNAMIC: fp16 appends, the block accessors in stored rows
    Seed s;
    s.byte(4);  // q8_0
    s.byte(4);  // DYNAMIC
    s.call(Call::kAppend);
    s.byte(1);
    s.tensor(EKV_DTYPE_FLOAT16, {1, 9, h, d}, flag::kRandomFill);
    s.tensor(EKV_DTYPE_FLOAT16, {1, 9, h, d}, flag::kRandomFill);
    s.call(Call::kUpdateKV);
    s.byte(1), s.byte(0);
    s.tensor(EKV_DTYPE_Q8_0, {h, len, d}, flag::kRandomFill);
    s.tensor(EKV_DTYPE_Q8_0, {h, len, d}, flag::kRandomFill);
    s.call(Call::kGetKV);
    s.byte(1), s.byte(1);
    s.tensor(EKV_DTYPE_Q8_0, {h, len, d});
    s.tensor(EKV_DTYPE_Q8_0, {h, len, d});
    s.call(Call::kAttn);
    s.byte(1), s.byte(3), s.byte(1), s.byte(0), s.byte(1);
    s.tensor(EKV_DTYPE_FLOAT16, {1, q, d}, flag::kRandomFill);
    s.tensor(EKV_DTYPE_FLOAT16, {1, q, d});
    s.tensor(EKV_DTYPE_FLOAT32, {1, q});
    s.call(Call::kUpdateAnchor);
    s.byte(1), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT16, {h, 2 * d}, flag::kRandomFill);
    write_file(dir + "/q8_0_blocks.bin", s.b);
  }
  {  // descriptors the checks refuse, each with its own reason
    Seed s;
    s.byte(0);  // float32
    s.byte(3);  // FIXED
    s.call(Call::kAppend);
    s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {1, 2, h, d}, 0, EKV_DEVICE_CPU, {2 * h * d, h * d, d, 1});  // strided, row-major
    s.tensor(EKV_DTYPE_FLOAT32, {1, 2, h, d}, 0, EKV_DEVICE_CUDA);
    s.call(Call::kGetImportance);
    s.byte(0), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {h, -len});
    s.call(Call::kGetImportance);
    s.byte(0), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {h, len}, flag::kNullData);
    s.call(Call::kGetAnchor);
    s.byte(0), s.byte(0);
    s.tensor(9, {h, d});
    s.call(Call::kGetAnchor);
    s.byte(0), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {h, 2 * d, 1, 1, 1});
    s.call(Call::kGetKV);
    s.byte(0), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {h, len, d}, flag::kNullShape);
    s.tensor(EKV_DTYPE_FLOAT32, {h, len, d}, flag::kNullDescriptor);
    s.call(Call::kGetKV);
    s.byte(0), s.byte(0);
    s.tensor(EKV_DTYPE_FLOAT32, {h, len, d}, 0, EKV_DEVICE_CPU, {len * d, 1, len});  // transposed
    s.tensor(EKV_DTYPE_FLOAT32, {h, len, INT64_MAX});
    write_file(dir + "/refused.bin", s.b);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ekv_fuzz_seeds DIR\n");
    return 2;
  }
  try {
    cache_file_seeds(argv[1]);
    config_seeds(argv[1]);
    cli_seeds(argv[1]);
    tensor_seeds(argv[1]);
  } catch (const ekv::Error& e) {
    std::fprintf(stderr, "ekv_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
