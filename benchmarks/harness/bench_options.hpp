#pragma once
// BenchOptions: what one ekv-bench run measures (shape, elastic settings, timing, output),
// with the older elastic KV CLI's names where they carry over. Parsing lives in
// bench/bench_cli.hpp; this header needs neither CLI11 nor nvcc.

#include <cstdint>
#include <string>

#include "ekv/core/device.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/policy.hpp"

namespace ekv::bench {

// Where the attention runs: auto picks CUDA when a GPU is visible, else the CPU.
enum class BenchBackend { kAuto, kCuda, kCpu };

inline const char* to_string(BenchBackend backend) {
  switch (backend) {
    case BenchBackend::kAuto: return "auto";
    case BenchBackend::kCuda: return "cuda";
    case BenchBackend::kCpu: return "cpu";
  }
  return "invalid";
}

struct BenchOptions {
  // shape: batch sequences of seq tokens each, q and kv heads of head_dim
  int seq = 4096;
  int batch = 1;
  int heads = 32;
  int kv_heads = 0;  // 0: as many as heads (the older CLI had no GQA)
  int dim = 128;
  DType dtype = DType::kFloat16;
  int block_len = 64;
  // elastic: read about 1/compress of exact's KV bytes, or budget_blocks blocks per sequence
  double compress = 4.0;
  int budget_blocks = 0;  // > 0 replaces compress
  AnchorKind anchor = AnchorKind::kQuest;
  int refresh = 1;  // ElasticConfig::token_step: steps per selection
  // timing
  int reps = 30;
  int warmup = 5;
  int inner_loops = 1;     // decode steps per timed sample
  double truncate = 10.0;  // percent of samples the trimmed mean drops at each end
  bool graphs = true;
  bool inference = false;  // a decode loop of decode_tokens steps instead of one step
  int decode_tokens = 64;
  bool paired_baseline = true;
  // data and output
  int needles = 0;  // blocks per (sequence, kv head) whose keys point along the query
  std::uint64_t seed = 42;
  BenchBackend device = BenchBackend::kAuto;
  bool json = false;
  std::string output;  // JSON to this file when not empty

  int q_heads() const { return heads; }
  int kv_head_count() const { return kv_heads > 0 ? kv_heads : heads; }
  // Tokens a sequence holds at most: the decode loop appends decode_tokens.
  int capacity_tokens() const { return seq + (inference ? decode_tokens : 0); }
  ElasticConfig elastic_config() const {
    ElasticConfig config;
    config.anchor = anchor;
    config.token_step = refresh;
    return config;
  }
  // Throws ekv::Error for what ElasticBudget and ElasticConfig reject.
  ElasticPolicy elastic_policy() const {
    return ElasticPolicy(elastic_config(),
                         budget_blocks > 0 ? ElasticBudget::blocks(budget_blocks) : ElasticBudget::ratio(compress));
  }

  // Never throws: ok, or the first problem as a sentence naming the flag. What a backend
  // supports (head_dim, dtype) is checked by the backend, which names its own lists.
  Support validate() const {
    const auto fail = [](const std::string& why) { return Support{false, why}; };
    if (seq < 1) return fail("--seq=" + std::to_string(seq) + " must be at least 1");
    if (batch < 1) return fail("--batch=" + std::to_string(batch) + " must be at least 1");
    if (heads < 1 || kv_heads < 0) return fail("--heads must be at least 1 and --kv-heads at least 0");
    if (heads % kv_head_count() != 0) {
      return fail("--heads=" + std::to_string(heads) + " must be a multiple of --kv-heads=" +
                  std::to_string(kv_head_count()));
    }
    if (block_len < 1) return fail("--block-len=" + std::to_string(block_len) + " must be at least 1");
    if (!(compress >= 1.0 && compress < 1e9)) return fail("--compress must be at least 1 (1 reads every block)");
    if (budget_blocks < 0) return fail("--budget must be at least 1 block");
    if (anchor == AnchorKind::kDynamic) {
      return fail("--anchor=dynamic needs token importance from earlier steps, which ekv-bench does not record; "
                  "supported: quest, block_mean, block_max, fixed");
    }
    if (refresh < 1) return fail("--refresh=" + std::to_string(refresh) + " must be at least 1");
    if (reps < 1 || warmup < 0 || inner_loops < 1) {
      return fail("--reps and --inner_loops must be at least 1 and --warmup at least 0");
    }
    if (!(truncate >= 0.0 && truncate < 50.0)) return fail("--truncate must lie in [0, 50) percent");
    if (inference && decode_tokens < 1) return fail("--decode_tokens must be at least 1 with --inference");
    if (needles < 0) return fail("--needles must be at least 0");
    if (static_cast<long long>(seq) + (inference ? decode_tokens : 0) > (1LL << 30)) {
      return fail("--seq plus --decode_tokens must stay below 2^30 tokens");
    }
    return {};
  }
};

// The backend that runs: auto is cuda where a GPU is visible, else cpu. Throws ekv::Error
// for cuda without a visible GPU.
inline BenchBackend resolve_backend(BenchBackend asked) {
  const bool gpu = device_count() > 0;
  if (asked == BenchBackend::kCuda && !gpu) {
    throw Error("--device cuda: no CUDA GPU is visible (no driver or no device); use --device cpu or auto");
  }
  if (asked == BenchBackend::kAuto) return gpu ? BenchBackend::kCuda : BenchBackend::kCpu;
  return asked;
}

}  // namespace ekv::bench
