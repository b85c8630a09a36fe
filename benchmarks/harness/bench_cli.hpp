#pragma once
// ekv-bench's command line, parsed with CLI11 (CLI11 is a dependency of this header only,
// not of ekv::ekv): the older elastic KV CLI's flags plus ekv's own, into BenchOptions.

#include <CLI/CLI.hpp>

#include <map>
#include <ostream>
#include <string>

#include "ekv/core/dtype.hpp"
#include "ekv/elastic/elastic_config.hpp"
#include "harness/bench_options.hpp"

namespace ekv::bench {

// ekv-bench's exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntimeError = 1;  // the run failed: no GPU for --device cuda, CUDA errors, I/O
inline constexpr int kExitUsage = 2;         // unknown flag, malformed or invalid value

inline constexpr const char* kBenchUsageHint = "Run with --help for the flags.";

namespace detail {

// Names to enum values in any case (the older spellings QUEST, BLOCK_MEAN parse too); its
// list of pairs stays out of the help, where the option's type name says it.
template <typename Enum>
CLI::CheckedTransformer names(const std::map<std::string, Enum>& map) {
  CLI::CheckedTransformer t(map, CLI::ignore_case);
  t.description("");
  return t;
}

// The CLI: every flag bound to a field of `o`, checked by CLI11 where CLI11 can.
inline void add_bench_flags(CLI::App& app, BenchOptions& o) {
  const std::map<std::string, DType> dtypes{{"fp16", DType::kFloat16},     {"float16", DType::kFloat16},
                                            {"half", DType::kFloat16},     {"bf16", DType::kBFloat16},
                                            {"bfloat16", DType::kBFloat16}, {"fp32", DType::kFloat32},
                                            {"float32", DType::kFloat32},  {"float", DType::kFloat32}};
  std::map<std::string, AnchorKind> anchors;
  for (AnchorKind kind : kAnchorKinds) {
    if (kind != AnchorKind::kDynamic) anchors.emplace(to_string(kind), kind);  // see BenchOptions::validate
  }
  const std::map<std::string, BenchBackend> devices{
      {"auto", BenchBackend::kAuto}, {"cuda", BenchBackend::kCuda}, {"cpu", BenchBackend::kCpu}};

  app.add_option("--seq", o.seq, "Tokens per sequence (with --inference: before the first decode step)")
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Sequences decoded together")->capture_default_str();
  app.add_option("--heads", o.heads, "Query heads")->capture_default_str();
  app.add_option("--kv-heads,--kv_heads", o.kv_heads, "KV heads (GQA); default: --heads");
  app.add_option("--dim", o.dim, "Head dimension")->capture_default_str();
  app.add_option("--dtype", o.dtype, "K, V, q and o element type: fp16, bf16 or fp32")
      ->transform(names(dtypes))
      ->type_name("{fp16,bf16,fp32}")
      ->default_str("fp16");
  app.add_option("--block-len,--block_len", o.block_len, "Tokens per KV-cache block")->capture_default_str();
  CLI::Option* compress =
      app.add_option("--compress", o.compress, "Elastic reads about 1/C of exact's KV bytes (C >= 1)")
          ->capture_default_str();
  app.add_option("--budget", o.budget_blocks, "Elastic reads this many blocks per sequence instead of --compress")
      ->excludes(compress);
  app.add_option("--anchor", o.anchor, "Block summary for scoring: quest, block_mean, block_max or fixed")
      ->transform(names(anchors))
      ->type_name("{quest,block_mean,block_max,fixed}")
      ->default_str("quest");
  app.add_option("--refresh", o.refresh, "Decode steps per elastic selection (between refreshes it is reused)")
      ->capture_default_str();
  app.add_option("--reps", o.reps, "Timed samples of each variant")->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed samples of each variant first")->capture_default_str();
  app.add_option("--inner_loops,--inner-loops", o.inner_loops, "Decode steps per timed sample")
      ->capture_default_str();
  app.add_option("--truncate", o.truncate, "Percent of samples the trimmed mean drops at each end")
      ->capture_default_str();
  app.add_flag("--graphs,!--no-graphs", o.graphs, "GPU: replay CUDA Graphs (default) or launch directly");
  app.add_flag("--inference", o.inference, "Time a decode loop of --decode_tokens steps (append + attention)");
  app.add_option("--decode_tokens,--decode-tokens", o.decode_tokens, "Steps of the --inference loop")
      ->capture_default_str();
  app.add_flag("--paired-baseline,!--no-paired-baseline", o.paired_baseline,
               "Interleave exact and elastic samples (default); off: all exact samples first");
  app.add_option("--needles", o.needles, "Blocks per sequence and kv head whose keys point along the query")
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of the random K, V and q")->capture_default_str();
  app.add_option("--device", o.device, "auto (CUDA if a GPU is visible, else CPU), cuda or cpu")
      ->transform(names(devices))
      ->type_name("{auto,cuda,cpu}")
      ->default_str("auto");
  app.add_flag("--json", o.json, "Print one JSON document on stdout instead of the table");
  app.add_option("--output,-o", o.output, "Write the JSON document to FILE instead (the table then goes to stdout)");
  app.footer("Exit codes: 0 ok, 1 runtime error, 2 usage error.");
}

}  // namespace detail

// Parses argv into `options`. Returns -1 to go on, or the code to exit with: kExitOk after
// --help (the help on `out`), kExitUsage after an unknown flag or a malformed or invalid
// value (the reason and a hint on `err`). Never throws for a user's input.
inline int parse_bench_args(int argc, const char* const* argv, BenchOptions& options, std::ostream& out,
                            std::ostream& err) {
  CLI::App app("ekv-bench: exact against elastic decode attention on the same KV cache, GPU or CPU", "ekv-bench");
  detail::add_bench_flags(app, options);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    err << "ekv-bench: " << e.what() << "\n" << kBenchUsageHint << "\n";
    return kExitUsage;
  }
  if (Support s = options.validate(); !s) {
    err << "ekv-bench: " << s.why << "\n" << kBenchUsageHint << "\n";
    return kExitUsage;
  }
  return -1;
}

}  // namespace ekv::bench
