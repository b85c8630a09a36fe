// Bandwidth and compute kernels, several launch shapes each, beside cudaMemcpy.

#include <cuda_fp16.h>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/kernels/fill.cuh"
#include "gpu_bench.hpp"
#include "harness/bandwidth.cuh"
#include "harness/fma_throughput.cuh"

namespace {

constexpr std::size_t kBytes = std::size_t{1} << 30;

void memcpy_d2d(benchmark::State& state) {
  ekv::Stream stream;
  ekv::DeviceBuffer<unsigned char> src(kBytes), dst(kBytes);
  src.fill_bytes(1, stream);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    EKV_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), kBytes, cudaMemcpyDeviceToDevice, st.get()));
  });
  ekv::bench::report_bandwidth(state, 2.0 * kBytes, s);
}

template <int CtaThreads, int Unroll>
void copy(benchmark::State& state) {
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const std::size_t n = kBytes / sizeof(float);
  ekv::DeviceBuffer<float> src(n), dst(n);
  ekv::fill<float>(src.span(), 1.0f, stream);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    ekv::bench::copy<float, CtaThreads, Unroll>(src.span(), dst.span(), device, st);
  });
  ekv::bench::report_bandwidth(state, 2.0 * kBytes, s);
}

template <typename T, int CtaThreads, int Unroll>
void read_reduce(benchmark::State& state) {
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const std::size_t n = kBytes / sizeof(T);
  ekv::DeviceBuffer<T> src(n);
  ekv::DeviceBuffer<float> partials(ekv::bench::read_reduce_ctas<T, CtaThreads, Unroll>(device, n));
  ekv::fill<T>(src.span(), ekv::DTypeTraits<T>::from_float(1.0f), stream);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    ekv::bench::read_reduce<T, CtaThreads, Unroll>(src.span(), partials.span(), st);
  });
  ekv::bench::report_bandwidth(state, static_cast<double>(kBytes), s);
}

// 256 MiB read as state.range(0) launches, issued directly or replayed from one graph.
void read_reduce_chunks(benchmark::State& state, bool graph) {
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  const std::size_t bytes = std::size_t{256} << 20;
  const std::size_t chunks = static_cast<std::size_t>(state.range(0));
  const std::size_t n = bytes / sizeof(float);
  ekv::DeviceBuffer<float> src(n);
  ekv::DeviceBuffer<float> partials(chunks * ekv::bench::read_reduce_ctas<float>(device, n / chunks));
  ekv::fill<float>(src.span(), 1.0f, stream);
  auto issue = [&](const ekv::Stream& st) { ekv::bench::read_reduce_chunks<float>(src.span(), chunks, partials.span(), st); };
  ekv::Graph g;
  if (graph) g = ekv::Graph::capture(stream, issue);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    if (graph) {
      g.launch(st);
    } else {
      issue(st);
    }
  });
  ekv::bench::report_bandwidth(state, static_cast<double>(bytes), s);
}

template <typename T>
void fma(benchmark::State& state) {
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::Stream stream;
  constexpr int kIterations = 4096;
  const std::size_t threads = static_cast<std::size_t>(ekv::bench::full_wave_ctas(device, ekv::bench::kFmaCtaThreads)) * 4 * ekv::bench::kFmaCtaThreads;
  ekv::DeviceBuffer<T> out(threads);
  const T one = ekv::bench::detail::lanes_from_float(1e-3f, T{});
  const T a = ekv::bench::detail::lanes_from_float(0.999f, T{});
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    ekv::bench::fma_chains<T>(out.span(), kIterations, one, a, one, st);
  });
  state.counters["TFLOP/s"] = ekv::bench::fma_chain_flops<T>(threads, kIterations) * state.iterations() / s / 1e12;
}

void apply_defaults(benchmark::internal::Benchmark* b) {
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->Repetitions(5)->ReportAggregatesOnly(true);
}

}  // namespace

BENCHMARK(memcpy_d2d)->Apply(apply_defaults);
BENCHMARK(copy<1024, 4>)->Apply(apply_defaults);
BENCHMARK(copy<512, 4>)->Apply(apply_defaults);
BENCHMARK(copy<1024, 8>)->Apply(apply_defaults);
BENCHMARK(copy<256, 8>)->Apply(apply_defaults);
BENCHMARK(read_reduce<float, 512, 4>)->Apply(apply_defaults);
BENCHMARK(read_reduce<float, 1024, 4>)->Apply(apply_defaults);
BENCHMARK(read_reduce<float, 512, 8>)->Apply(apply_defaults);
BENCHMARK(read_reduce<float, 256, 8>)->Apply(apply_defaults);
BENCHMARK(read_reduce<__half, 512, 4>)->Apply(apply_defaults);
BENCHMARK_CAPTURE(read_reduce_chunks, stream, false)->Arg(1)->Arg(16)->Arg(64)->Arg(256)->Apply(apply_defaults);
BENCHMARK_CAPTURE(read_reduce_chunks, graph, true)->Arg(1)->Arg(16)->Arg(64)->Arg(256)->Apply(apply_defaults);
BENCHMARK(fma<float>)->Apply(apply_defaults);
BENCHMARK(fma<__half2>)->Apply(apply_defaults);

int main(int argc, char** argv) { return ekv::bench::main(argc, argv); }
