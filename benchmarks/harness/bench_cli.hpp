#pragma once
// ekv-bench's command line, parsed with CLI11 (CLI11 is a dependency of this header only,
// not of ekv::ekv): the older elastic KV CLI's flags plus ekv's own, into BenchOptions.

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <cctype>
#include <exception>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "ekv/core/dtype.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/core/version.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "harness/bench_options.hpp"

namespace ekv::bench {

// ekv-bench's exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntimeError = 1;  // the run failed: no GPU for --device cuda, CUDA errors, I/O
inline constexpr int kExitUsage = 2;         // unknown flag, malformed or invalid value

inline constexpr const char* kBenchUsageHint = "Run with --help for the flags.";

// What --version prints: ekv's version and, where the build named it, the git commit.
inline std::string version_text() {
#if defined(EKV_GIT_COMMIT)
  return std::string("ekv-bench ") + kVersion + " (commit " + EKV_GIT_COMMIT + ")";
#else
  return std::string("ekv-bench ") + kVersion;
#endif
}

namespace detail {

// The flags CLI11 binds as text and ekv converts after parsing, so that an unknown name
// is answered with ekv's own list (never CLI11's map, never a number as an enum).
struct BenchNames {
  std::string dtype = "fp16";
  std::string kv_dtype;  // empty: K and V in --dtype
  std::string anchor = "quest";
  std::string device = "auto";
};

inline std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// `value` among `names` (any case): the value, or why not with the supported names.
template <typename Enum>
Support parse_name(const char* flag, const std::string& value,
                   const std::vector<std::pair<std::string, Enum>>& names, const std::string& supported, Enum& out) {
  for (const auto& [name, e] : names) {
    if (lower(value) == name) {
      out = e;
      return {};
    }
  }
  return {false, std::string(flag) + "=" + value + " is not a known value; supported: " + supported};
}

inline Support apply_names(const BenchNames& n, BenchOptions& o) {
  const std::vector<std::pair<std::string, DType>> dtypes{
      {"fp16", DType::kFloat16},      {"float16", DType::kFloat16}, {"half", DType::kFloat16},
      {"bf16", DType::kBFloat16},     {"bfloat16", DType::kBFloat16}, {"fp32", DType::kFloat32},
      {"float32", DType::kFloat32},   {"float", DType::kFloat32}};
  if (Support s = parse_name("--dtype", n.dtype, dtypes, "fp16, bf16, fp32", o.dtype); !s) return s;
  if (!n.kv_dtype.empty()) {
    std::vector<std::pair<std::string, KVStorage>> storages;
    for (KVStorage k : kAllKVStorages) storages.emplace_back(to_string(k), k);
    KVStorage storage{};
    if (Support s = parse_name("--kv-dtype", n.kv_dtype, storages, "fp16, bf16, fp32, fp8, q8_0, q4_0", storage); !s) {
      return s;
    }
    o.kv_dtype = storage;
  }
  std::vector<std::pair<std::string, AnchorKind>> anchors;
  for (AnchorKind kind : kAnchorKinds) anchors.emplace_back(to_string(kind), kind);
  if (Support s = parse_name("--anchor", n.anchor, anchors, "quest, block_mean, block_max, fixed", o.anchor); !s) {
    return s;
  }
  const std::vector<std::pair<std::string, BenchBackend>> devices{
      {"auto", BenchBackend::kAuto}, {"cuda", BenchBackend::kCuda}, {"cpu", BenchBackend::kCpu}};
  return parse_name("--device", n.device, devices, "auto, cuda, cpu", o.device);
}

// A non-negative integer of at least `least` (up to 2^64 - 1, as seeds go), said in words
// (CLI11's own range validators print the range of a double).
inline CLI::Validator at_least(unsigned long long least, const std::string& unit) {
  return CLI::Validator(
      [least, unit](std::string& value) -> std::string {
        const std::string why = "must be an integer of at least " + std::to_string(least) + unit + ", got " + value;
        if (value.empty() || !std::isdigit(static_cast<unsigned char>(value[0]))) return why;
        try {
          std::size_t used = 0;
          const unsigned long long parsed = std::stoull(value, &used);
          return used == value.size() && parsed >= least ? std::string() : why;
        } catch (const std::exception&) {
          return why;
        }
      },
      "");
}

// The CLI: every flag bound to a field of `o` (names to `n`), defaults in the help as
// they are.
inline void add_bench_flags(CLI::App& app, BenchOptions& o, BenchNames& n) {
  app.add_option("--seq", o.seq, "Tokens per sequence (with --inference: before the first decode step)")
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Sequences decoded together")->capture_default_str();
  app.add_option("--heads", o.heads, "Query heads")->capture_default_str();
  app.add_option("--kv-heads,--kv_heads", o.kv_heads, "KV heads (GQA); default: --heads");
  app.add_option("--dim", o.dim, "Head dimension (GPU: 64, 128 or 256)")->capture_default_str();
  app.add_option("--dtype", n.dtype, "K, V, q and o element type: fp16, bf16 or fp32")->capture_default_str();
  app.add_option("--kv-dtype,--kv_dtype", n.kv_dtype,
                 "K and V storage: fp8, q8_0 or q4_0 (q and o stay --dtype; GPU: with fp16 or bf16); default: --dtype");
  app.add_option("--block-len,--block_len", o.block_len, "Tokens per KV-cache block")->capture_default_str();
  CLI::Option* compress =
      app.add_option("--compress", o.compress, "Elastic reads about 1/C of exact's KV bytes (C >= 1)")
          ->capture_default_str();
  app.add_option("--budget", o.budget_blocks, "Elastic reads this many blocks per sequence instead of --compress")
      ->excludes(compress)
      ->check(at_least(1, " block"));
  app.add_option("--anchor", n.anchor, "Block summary for scoring: quest, block_mean, block_max or fixed")
      ->capture_default_str();
  app.add_option("--refresh", o.refresh, "Decode steps per elastic selection (between refreshes it is reused)")
      ->capture_default_str();
  app.add_option("--reps", o.reps, "Timed samples of each variant")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed samples of each variant first")->capture_default_str();
  app.add_option("--inner_loops,--inner-loops", o.inner_loops, "Decode steps per timed sample")
      ->capture_default_str();
  app.add_option("--truncate", o.truncate, "Percent of samples the trimmed mean drops at each end")
      ->capture_default_str();
  app.add_flag_callback("--no-graphs", [&o] { o.graphs = false; },
                        "GPU: launch each kernel directly (default: replay CUDA Graphs)");
  app.add_flag_callback("--graphs", [&o] { o.graphs = true; }, "GPU: replay CUDA Graphs (the default)");
  app.add_flag_callback("--no-fallback", [&o] { o.exact_fallback = false; },
                        "GPU: elastic selects even where it cannot pay and would attend exactly");
  app.add_flag("--inference", o.inference, "Time a decode loop of --decode_tokens steps (append + attention)");
  app.add_option("--decode_tokens,--decode-tokens", o.decode_tokens, "Steps of the --inference loop")
      ->capture_default_str();
  app.add_flag_callback("--no-paired-baseline", [&o] { o.paired_baseline = false; },
                        "Take all exact samples first (default: interleave exact and elastic samples)");
  app.add_flag_callback("--paired-baseline", [&o] { o.paired_baseline = true; },
                        "Interleave exact and elastic samples (the default)");
  app.add_option("--needles", o.needles,
                 "Blocks per sequence and kv head whose keys point along the queries; 0: purely random K and V "
                 "(default: " + std::to_string(BenchOptions::kDefaultNeedles) + ", fewer where a sequence is short)");
  app.add_option("--seed", o.seed, "Seed of the random K, V and q")->capture_default_str()->check(at_least(0, ""));
  app.add_option("--device", n.device, "auto (CUDA if a GPU is visible, else CPU), cuda or cpu")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "CPU backend: worker threads (default: every hardware thread)");
  app.add_flag_callback("--no-roofs", [&o] { o.roofs = false; },
                        "Skip measuring the read, copy and FMA roofs (efficiency figures are then null)");
  app.add_flag("--json", o.json, "Print one JSON document on stdout instead of the table");
  app.add_option("--output,-o", o.output, "Write the JSON document to FILE instead (the table then goes to stdout)");
  app.set_version_flag("--version", version_text());
  app.footer("Exit codes: 0 ok, 1 runtime error, 2 usage error.");
}

// Where --output would go: its directory exists and is writable. Never throws.
inline Support output_supported(const std::string& path) {
  if (path.empty()) return {};
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return {false, "--output=" + path + ": the directory '" + dir + "' does not exist"};
  }
  if (access(dir.c_str(), W_OK) != 0) {
    return {false, "--output=" + path + ": the directory '" + dir + "' is not writable"};
  }
  return {};
}

}  // namespace detail

// Parses argv into `options`. Returns -1 to go on, or the code to exit with: kExitOk after
// --help or --version (on `out`), kExitUsage after an unknown flag or a malformed or
// invalid value (the reason and a hint on `err`). Never throws for a user's input.
inline int parse_bench_args(int argc, const char* const* argv, BenchOptions& options, std::ostream& out,
                            std::ostream& err) {
  CLI::App app("ekv-bench: exact against elastic decode attention on the same KV cache, GPU or CPU", "ekv-bench");
  detail::BenchNames names;
  detail::add_bench_flags(app, options, names);
  const auto usage = [&](const std::string& why) {
    err << "ekv-bench: " << why << "\n" << kBenchUsageHint << "\n";
    return kExitUsage;
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return kExitOk;
  } catch (const CLI::CallForVersion&) {
    out << version_text() << "\n";
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    return usage(e.what());
  }
  if (Support s = detail::apply_names(names, options); !s) return usage(s.why);
  if (Support s = options.validate(); !s) return usage(s.why);
  if (Support s = detail::output_supported(options.output); !s) return usage(s.why);
  return -1;
}

}  // namespace ekv::bench
