#pragma once
// BenchOptions: what one ekv-bench run measures (shape, elastic settings, timing, output),
// with the older elastic KV CLI's names where they carry over. Parsing lives in
// harness/bench_cli.hpp; this header needs neither CLI11 nor nvcc.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "ekv/core/device.hpp"
#include "ekv/core/dispatch.hpp"
#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/cpu_attention.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "ekv/elastic/elastic_problem.hpp"
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
  // K and V storage when not --dtype itself: fp8, q8_0 or q4_0 (core/quant.hpp), q and o
  // staying in --dtype; unset (or --dtype's own format): K and V in --dtype
  std::optional<KVStorage> kv_dtype;
  int block_len = 64;
  // elastic: read about 1/compress of exact's KV bytes, or budget_blocks blocks per sequence
  double compress = 4.0;
  int budget_blocks = 0;  // > 0 replaces compress
  AnchorKind anchor = AnchorKind::kQuest;
  int refresh = 1;  // ElasticConfig::token_step: steps per selection
  // GPU: elastic attends exactly where its budget cannot pay (ElasticProblem::attends_exactly);
  // false (--no-fallback) selects whatever the shape
  bool exact_fallback = true;
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
  // blocks per (sequence, kv head) whose tokens' keys point along the group's queries
  // (each query head of the group has tokens there); 0: purely random K and V; -1 (the
  // default): kDefaultNeedles, or as many as a short sequence has room for
  int needles = -1;
  std::uint64_t seed = 42;
  BenchBackend device = BenchBackend::kAuto;
  int threads = 0;    // CPU backend: worker threads; 0: every hardware thread
  bool roofs = true;  // measure the read, copy and FMA roofs first (--no-roofs skips them)
  bool json = false;
  std::string output;  // JSON to this file when not empty

  // The default structure of the cache: needles a query finds, so that elastic's accuracy
  // figures say how much of the attention it found (on purely random keys any 1/C of the
  // blocks holds about 1/C of it, whatever the selection).
  static constexpr int kDefaultNeedles = 4;
  // The flags' ranges beyond the backends' own lists.
  static constexpr int kMaxDim = 1024;
  static constexpr int kMaxBlockLen = 65536;
  static constexpr int kMaxHeads = 65535;
  static constexpr int kMaxThreads = 4096;

  int q_heads() const { return heads; }
  // How K and V are stored: --kv-dtype where it quantizes, else --dtype's dense format.
  KVStorage kv_storage() const { return kv_dtype && is_quantized(*kv_dtype) ? *kv_dtype : dense_storage(dtype); }
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

  // Blocks between a sequence's first (a sink) and its last (the window) at --seq: where
  // needles may go.
  int needle_room() const { return std::max(0, sequence_blocks(seq, block_len) - 2); }
  // The needles planted: --needles, or the default's.
  int needle_blocks() const { return needles >= 0 ? needles : std::min(kDefaultNeedles, needle_room()); }

  // K and V bytes of the cache at its capacity (whole batch) stored as `s` (a quantized row
  // counts its codes and scales: kv_row_bytes).
  double cache_bytes(KVStorage s) const {
    return 2.0 * batch * capacity_tokens() * static_cast<double>(kv_head_count()) * kv_row_bytes(s, dim);
  }
  // ... as this run stores them.
  double kv_bytes() const { return cache_bytes(kv_storage()); }
  // ... in --dtype: the CPU backend keeps those values too when K and V are quantized.
  double dense_kv_bytes() const { return cache_bytes(dense_storage(dtype)); }

  // Never throws: ok, or the first problem as a sentence naming the flag and its range.
  // What a backend supports (head_dim, dtype) is checked by backend_supports, which names
  // its own lists; the memory a run needs by memory_supports.
  Support validate() const {
    const auto fail = [](const std::string& why) { return Support{false, why}; };
    const auto range = [&](const char* flag, long long value, long long lo, long long hi) {
      return value >= lo && value <= hi ? Support{}
                                        : fail(std::string(flag) + "=" + std::to_string(value) + " is out of range; " +
                                               "supported: " + std::to_string(lo) + " to " + std::to_string(hi));
    };
    if (Support s = range("--seq", seq, 1, 1 << 30); !s) return s;
    if (Support s = range("--batch", batch, 1, 65535); !s) return s;
    if (Support s = range("--heads", heads, 1, kMaxHeads); !s) return s;
    if (Support s = range("--kv-heads", kv_heads, 0, kMaxHeads); !s) return s;
    if (heads % kv_head_count() != 0) {
      return fail("--heads=" + std::to_string(heads) + " must be a multiple of --kv-heads=" +
                  std::to_string(kv_head_count()));
    }
    if (Support s = range("--dim", dim, 1, kMaxDim); !s) return s;
    if (kv_dtype && !is_quantized(*kv_dtype) && *kv_dtype != dense_storage(dtype)) {
      return fail(std::string("--kv-dtype=") + to_string(*kv_dtype) + " with --dtype=" + to_string(dtype) +
                  ": unquantized K and V are stored in --dtype; give --dtype for them, or --kv-dtype=fp8, q8_0 or "
                  "q4_0");
    }
    if (Support s = kv_storage_supports(kv_storage(), dim); !s) return fail("--kv-dtype: " + s.why);
    if (Support s = range("--block-len", block_len, 1, kMaxBlockLen); !s) return s;
    if (Support s = range("--threads", threads, 0, kMaxThreads); !s) return s;
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
    if (static_cast<long long>(seq) + (inference ? decode_tokens : 0) > (1LL << 30)) {
      return fail("--seq plus --decode_tokens must stay below 2^30 tokens");
    }
    // needles go in distinct blocks between the first (a sink) and the last (the window)
    const int blocks = sequence_blocks(seq, block_len);
    const int room = needle_room();
    if (needles < -1 || needles > room) {
      return fail("--needles=" + std::to_string(needles) + " is out of range for " + std::to_string(blocks) +
                  " blocks of --block-len=" + std::to_string(block_len) + "; supported: 0 to " + std::to_string(room) +
                  " (blocks between the first and the last)");
    }
    // the pool's elements are indexed in 64 bits; the run's memory is checked later
    if (dense_kv_bytes() > 0x1p62) {
      return fail("--batch x --seq x --kv-heads x --dim = " + std::to_string(dense_kv_bytes() / 2 / dtype_size(dtype)) +
                  " elements overflow the cache's 64-bit indexing");
    }
    return {};
  }
};

// What the chosen backend supports of these options, checked before any work: on the GPU
// decode's and elastic selection's lists (supports of DecodeProblem and ElasticProblem),
// then, where --kv-dtype quantizes, what ElasticProblem supports over that storage (half
// and bfloat16 queries: the quantized decode kernel is plan_quant_decode's, on tensor
// cores; no QHEAD retrieval); on the CPU cpu_decode's. Never throws.
inline Support backend_supports(const BenchOptions& o, BenchBackend backend) {
  const DecodeProblem problem{o.dtype, o.batch, o.q_heads(), o.kv_head_count(), o.dim, o.capacity_tokens()};
  if (backend == BenchBackend::kCpu) return cpu_decode_supports(problem);
  ElasticProblem elastic;
  elastic.decode = problem;
  elastic.block_len = o.block_len;
  try {
    elastic.policy = o.elastic_policy();
  } catch (const Error& e) {
    return {false, e.what()};
  }
  if (Support s = supports(elastic); !s) return s;
  if (!is_quantized(o.kv_storage())) return {};
  // exact and elastic both read the storage: ElasticProblem's list covers plan_quant_decode's
  elastic.kv_storage = o.kv_storage();
  if (Support s = supports(elastic); !s) {
    return {false, std::string("--kv-dtype=") + to_string(o.kv_storage()) + " on the GPU: " + s.why};
  }
  return {};
}

// The memory a backend's run may take: the current GPU's free memory, or the host's
// physical memory; `where` names it for messages. Never throws (0 where nothing answers).
inline double available_memory_bytes(BenchBackend backend, std::string& where) {
  if (backend == BenchBackend::kCuda) {
    std::size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    where = "the GPU's free memory";
    return static_cast<double>(free_bytes);
  }
  where = "the host's physical memory";
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * page : 0;
}

// Whether the run's buffers fit the memory there is: the GPU's free memory, or the host's
// physical memory for the CPU backend. Bytes: K and V at capacity (with --kv-dtype
// quantizing, also --dtype's values: see `dense`), the anchors (float64 on the CPU path)
// and, on the GPU, the L2 flush buffer and 5% for everything else.
inline Support memory_supports(const BenchOptions& o, BenchBackend backend, double available_bytes,
                               const std::string& where) {
  const double anchor_values = 2.0 * o.dim;  // QUEST: the most of ekv-bench's kinds (FIXED keeps one key)
  const double blocks = static_cast<double>(o.batch) * sequence_blocks(o.capacity_tokens(), o.block_len);
  const double anchor_bytes = blocks * o.kv_head_count() * anchor_values *
                              (backend == BenchBackend::kCpu ? sizeof(double) : dtype_size(o.dtype));
  // both backends keep --dtype's values beside quantized ones (the reference, and where
  // needles are planted before quantizing)
  const double dense = is_quantized(o.kv_storage()) ? o.dense_kv_bytes() : 0.0;
  const double needed =
      (o.kv_bytes() + dense + anchor_bytes) * 1.05 + (backend == BenchBackend::kCuda ? 256.0 * (1 << 20) : 0);
  if (needed <= available_bytes) return {};
  char text[256];
  std::snprintf(text, sizeof(text),
                "the run needs about %.2f GiB (K and V at --batch=%d x %d tokens x --kv-heads=%d x --dim=%d, plus "
                "anchors); %s has %.2f GiB",
                needed / 1073741824.0, o.batch, o.capacity_tokens(), o.kv_head_count(), o.dim, where.c_str(),
                available_bytes / 1073741824.0);
  return {false, text};
}

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

// Both checks of a run before it starts: what the backend supports, then the memory.
inline Support run_supported(const BenchOptions& o, BenchBackend backend) {
  if (Support s = backend_supports(o, backend); !s) return s;
  std::string where;
  const double available = available_memory_bytes(backend, where);
  return available > 0 ? memory_supports(o, backend, available, where) : Support{};
}

}  // namespace ekv::bench
