// The C API's two performance goals (issue 18), each against its ceiling measured in the same run:
// 1. ekv_compress on 100M floats (uniform in [-1, 1]; thresholds keeping 50% and 10%,
//    with and without indices), on device pointers against the device copy bandwidth
//    (ekv_mem_bandwidth, read + write) and on pageable host pointers against the
//    host-to-device bandwidth of cudaMemcpy from the same memory. Every result is checked
//    against a host loop first: the kept count and every kept value and index.
// 2. ekv_cache_attn against the C++ KVCache::attn it wraps, the C++ call followed by the
//    same stream synchronisation the handle does: fp16, 32/8 heads, dim 128, block 64, one
//    layer, the same tokens appended to both caches (outputs checked bit-identical), host
//    wall time per call, paired and interleaved samples, exact and elastic (C = 8).
// Usage: ekv_c_api_bench [samples]

#include <cuda_fp16.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ekv/c_api.h>
#include <ekv/ekv.cuh>

#include "harness/paired_samples.hpp"
#include "harness/random.hpp"
#include "harness/random_fill.cuh"
#include "harness/statistics.hpp"

namespace {

void check(ekv_status s, const char* what) {
  if (s != EKV_SUCCESS) {
    std::fprintf(stderr, "c_api_bench: %s failed: %s\n", what, ekv_last_error());
    std::exit(1);
  }
}

// Median ms of `reps` event-timed runs of f on the legacy default stream (after one untimed).
template <typename F>
double median_ms(int reps, F&& f) {
  f();
  std::vector<double> ms;
  ekv::Event start, stop;
  const ekv::Stream legacy = ekv::Stream::borrow(cudaStreamLegacy);
  for (int i = 0; i < reps; ++i) {
    start.record(legacy);
    f();
    stop.record(legacy);
    stop.synchronize();
    ms.push_back(ekv::Event::elapsed_ms(start, stop));
  }
  return ekv::bench::summarize(ms, 0.0).median;
}

void compress_goal(int reps) {
  constexpr int kSeq = 100'000, kHidden = 1'000;
  constexpr std::size_t kN = std::size_t{kSeq} * kHidden;
  const std::vector<float> host_in = ekv::bench::random_uniform<float>(kN, -1.0f, 1.0f, 17);
  ekv::DeviceBuffer<float> in(kN), out(kN);
  ekv::DeviceBuffer<int> idx(kN);
  in.copy_from(host_in);
  float copy_gbps = 0;
  check(ekv_mem_bandwidth(in.data(), out.data(), static_cast<int>(kN), 10, &copy_gbps), "ekv_mem_bandwidth");
  ekv::DeviceBuffer<float> h2d_dst(kN);
  const double h2d_ms = median_ms(reps, [&] {
    EKV_CUDA_CHECK(cudaMemcpy(h2d_dst.data(), host_in.data(), kN * sizeof(float), cudaMemcpyHostToDevice), "h2d");
  });
  const double h2d_gbps = kN * sizeof(float) / (h2d_ms * 1e6);
  std::printf("ekv_compress, %zu floats: device copy %.0f GB/s (ekv_mem_bandwidth, read + write), host-to-device "
              "%.1f GB/s (cudaMemcpy from pageable memory, median of %d)\n",
              kN, copy_gbps, h2d_gbps, reps);
  std::printf("%-7s %5s %7s %9s %10s %12s %10s %10s\n", "memory", "kept", "indices", "avg ms", "input GB/s",
              "moved GB/s", "ceiling", "ratio");
  std::vector<float> host_out(kN);
  std::vector<int> host_idx(kN);
  for (float threshold : {0.5f, 0.9f}) {
    std::vector<float> want_values;
    std::vector<int> want_idx;
    for (std::size_t i = 0; i < kN; ++i) {
      if (std::abs(host_in[i]) > threshold) {
        want_values.push_back(host_in[i]);
        want_idx.push_back(static_cast<int>(i));
      }
    }
    const auto k = want_values.size();
    for (bool on_device : {true, false}) {
      for (bool with_indices : {true, false}) {
        int kept = -1;
        float avg = 0, sd = 0;
        const float* src = on_device ? in.data() : host_in.data();
        float* dst = on_device ? out.data() : host_out.data();
        int* ids = with_indices ? (on_device ? idx.data() : host_idx.data()) : nullptr;
        check(ekv_compress(src, dst, ids, threshold, kSeq, kHidden, &kept, reps, 2, &avg, &sd), "ekv_compress");
        // the result first: every kept value (and index) against the host loop's
        std::vector<float> got(k);
        std::vector<int> got_idx(with_indices ? k : 0);
        if (on_device) {
          out.copy_to(ekv::Span<float>(got.data(), k));
          if (with_indices) idx.copy_to(ekv::Span<int>(got_idx.data(), k));
        } else {
          std::memcpy(got.data(), host_out.data(), k * sizeof(float));
          if (with_indices) std::memcpy(got_idx.data(), host_idx.data(), k * sizeof(int));
        }
        if (static_cast<std::size_t>(kept) != k || std::memcmp(got.data(), want_values.data(), k * 4) != 0 ||
            (with_indices && std::memcmp(got_idx.data(), want_idx.data(), k * 4) != 0)) {
          std::fprintf(stderr, "c_api_bench: ekv_compress's result differs from the host loop's\n");
          std::exit(1);
        }
        const double out_bytes = k * (with_indices ? 8.0 : 4.0);
        const double input_gbps = kN * 4.0 / (avg * 1e6), moved_gbps = (kN * 4.0 + out_bytes) / (avg * 1e6);
        // device: bytes moved (read + write) against the copy's; host: input bytes against the h2d rate
        const double ceiling = on_device ? copy_gbps : h2d_gbps;
        const double ratio = (on_device ? moved_gbps : input_gbps) / ceiling;
        std::printf("%-7s %4.0f%% %7s %9.3f %10.1f %12.1f %10.1f %10.2f\n", on_device ? "device" : "host",
                    100.0 * k / kN, with_indices ? "yes" : "no", avg, input_gbps, moved_gbps, ceiling, ratio);
      }
    }
  }
}

void handle_goal(int samples) {
  using T = __half;
  constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kBlockLen = 64;
  std::printf("ekv_cache_attn against KVCache::attn + stream synchronize, fp16 32/8 heads dim 128 block 64, "
              "median us of %d paired samples (host wall time per call)\n", samples);
  std::printf("%-8s %-8s %-6s %10s %10s %10s %14s\n", "shape", "variant", "exact", "C++", "C API", "overhead",
              "paired median");
  for (int seq : {4096, 32768}) {
    const std::string text = "layer_num=1 kv_head_num=8 q_head_num=32 head_dim=128 block_len=64 kv_type=fp16 "
                             "anchor_type=quest max_batch_size=1 max_block_num=" + std::to_string(seq / kBlockLen);
    const ekv::KVCacheConfig config = ekv::parse_kv_cache_config(text);
    const ekv::Stream stream;
    ekv::KVCache cpp(config, ekv::DeviceInfo::current(), stream);
    ekv_cache* handle = nullptr;
    check(ekv_cache_create_from_text(text.c_str(), EKV_DEVICE_CUDA, 0, &handle), "ekv_cache_create_from_text");
    const std::size_t n = std::size_t{1} * seq * kKvHeads * kDim;
    ekv::DeviceBuffer<T> k(n), v(n), q(std::size_t{kQHeads} * kDim), o_cpp(q.size()), o_c(q.size());
    ekv::DeviceBuffer<float> lse_cpp(kQHeads), lse_c(kQHeads);
    ekv::bench::random_uniform_fill<T>(k.span(), -1.0f, 1.0f, 1, stream);
    ekv::bench::random_uniform_fill<T>(v.span(), -1.0f, 1.0f, 2, stream);
    ekv::bench::random_uniform_fill<T>(q.span(), -1.0f, 1.0f, 3, stream);
    stream.synchronize();
    const std::int64_t kv_shape[] = {1, seq, kKvHeads, kDim}, q_shape[] = {1, kQHeads, kDim},
                       lse_shape[] = {1, kQHeads};
    auto tensor = [](void* data, int dtype, int ndim, const std::int64_t* shape) {
      return ekv_tensor{data, dtype, ndim, shape, nullptr, EKV_DEVICE_CUDA, 0};
    };
    const ekv_tensor ck = tensor(k.data(), EKV_DTYPE_FLOAT16, 4, kv_shape);
    const ekv_tensor cv = tensor(v.data(), EKV_DTYPE_FLOAT16, 4, kv_shape);
    check(ekv_cache_append(handle, 0, &ck, &cv), "ekv_cache_append");
    const auto kv_view = [&](T* p) {
      return ekv::TensorView::contiguous(p, ekv::DType::kFloat16, {1, seq, kKvHeads, kDim}, ekv::DeviceKind::kCuda);
    };
    cpp.append(0, kv_view(k.data()), kv_view(v.data()), stream);
    stream.synchronize();
    const auto tq = ekv::TensorView::of(q.data(), {1, kQHeads, kDim}, ekv::DeviceKind::kCuda);
    const auto to = ekv::TensorView::of(o_cpp.data(), {1, kQHeads, kDim}, ekv::DeviceKind::kCuda);
    const auto tl = ekv::TensorView::of(lse_cpp.data(), {1, kQHeads}, ekv::DeviceKind::kCuda);
    const ekv_tensor cq = tensor(q.data(), EKV_DTYPE_FLOAT16, 3, q_shape);
    const ekv_tensor co = tensor(o_c.data(), EKV_DTYPE_FLOAT16, 3, q_shape);
    const ekv_tensor cl = tensor(lse_c.data(), EKV_DTYPE_FLOAT32, 2, lse_shape);
    const int pick = seq / kBlockLen / 8 - 2;  // C = 8: one sink and one window block, the rest picked
    for (int elastic = 0; elastic < 2; ++elastic) {
      const int p = elastic ? pick : -1;
      const auto wall = [](auto&& f) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      };
      const auto cpp_call = [&] {
        return wall([&] {
          cpp.attn(tq, to, tl, 0, 0, stream, p, 1, 1);
          stream.synchronize();
        });
      };
      const auto c_call = [&] {
        return wall([&] { check(ekv_cache_attn(handle, &cq, &co, &cl, 0, 0, p, 1, 1, nullptr), "ekv_cache_attn"); });
      };
      const ekv::bench::PairedSamples s = ekv::bench::paired_samples(10, samples, true, cpp_call, c_call, [] {});
      // the same tokens and query: the same output, bit for bit
      std::vector<T> a(q.size()), b(q.size());
      o_cpp.copy_to(ekv::Span<T>(a.data(), a.size()));
      o_c.copy_to(ekv::Span<T>(b.data(), b.size()));
      if (std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) != 0) {
        std::fprintf(stderr, "c_api_bench: the handle's output differs from KVCache::attn's\n");
        std::exit(1);
      }
      std::vector<double> diff(s.a.size());
      for (std::size_t i = 0; i < diff.size(); ++i) diff[i] = s.b[i] - s.a[i];
      const double ma = ekv::bench::summarize(s.a).median * 1e6, mb = ekv::bench::summarize(s.b).median * 1e6;
      std::printf("%-8s %-8s %-6s %10.2f %10.2f %10.2f %14.2f\n", (std::to_string(seq / 1024) + "K").c_str(),
                  elastic ? "elastic" : "exact", cpp.last_attn_exact() ? "yes" : "no", ma, mb, mb - ma,
                  ekv::bench::summarize(diff).median * 1e6);
    }
    check(ekv_cache_destroy(handle), "ekv_cache_destroy");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (ekv::device_count() == 0) {
    std::printf("c_api_bench: no CUDA GPU found\n");
    return 0;
  }
  const int samples = argc > 1 ? std::atoi(argv[1]) : 200;
  compress_goal(10);
  handle_goal(samples);
  return 0;
}
