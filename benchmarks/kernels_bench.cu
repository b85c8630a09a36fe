// Bandwidth and compute kernels, several launch shapes each, beside cudaMemcpy; and
// magnitude_select (what ekv_compress runs) over several tile shapes, beside CUB's
// DeviceSelect::If, against the copies of the same run (of_copy: bytes moved, read + write).

#include <cuda_fp16.h>

#include "ekv/core/device_buffer.hpp"
#include "ekv/core/graph.hpp"
#include "ekv/kernels/fill.cuh"
#include "ekv/kernels/magnitude_select.cuh"
#include "gpu_bench.hpp"
#include "harness/bandwidth.cuh"
#include "harness/fma_throughput.cuh"
#include "harness/random_fill.cuh"

#include <cub/device/device_select.cuh>

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

// 100M floats uniform in [-1, 1]: threshold state.range(0) / 100 (50 keeps half, 90 a
// tenth), positions when state.range(1) is 1. Bytes moved: the input, the kept values and
// their positions. 400 MB, far past L2: no flush needed.
constexpr std::size_t kSelectItems = 100'000'000;

struct SelectInputs {
  ekv::DeviceBuffer<float> in{kSelectItems}, out{kSelectItems};
  ekv::DeviceBuffer<std::int32_t> indices{kSelectItems}, count{1};
  explicit SelectInputs(const ekv::Stream& stream) {
    ekv::bench::random_uniform_fill(in.span(), -1.0f, 1.0f, 17, stream);
  }
  double moved_bytes(bool with_indices) const {
    std::int32_t kept = 0;
    count.copy_to(ekv::Span<std::int32_t>(&kept, 1));
    return 4.0 * kSelectItems + kept * (with_indices ? 8.0 : 4.0);
  }
};

// Other look-back waits than CUB's default for an int.
using NoWait = cub::detail::no_delay_constructor_t<450>;                 // spin, after 450 ns
using Backoff = cub::detail::exponential_backoff_constructor_t<32, 450>;  // 32 ns, doubling

template <int kWarps, int kLoads, class Delay = ekv::detail::MagnitudeSelectDelay>
void magnitude_select(benchmark::State& state) {
  ekv::Stream stream;
  SelectInputs data(stream);
  const float threshold = static_cast<float>(state.range(0)) / 100.0f;
  const bool with_indices = state.range(1) != 0;
  ekv::DeviceBuffer<std::byte> workspace(
      ekv::magnitude_select_workspace_bytes<kWarps, kLoads>(kSelectItems, with_indices));
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    ekv::detail::magnitude_select_with<kWarps, kLoads, Delay>(data.in.span(), threshold, data.out.data(),
                                                              with_indices ? data.indices.data() : nullptr,
                                                              data.count.data(), workspace.span(), st);
  });
  stream.synchronize();
  ekv::bench::report_bandwidth(state, data.moved_bytes(with_indices), s);
}

// The peer: CUB's select of the values alone (what magnitude_select ran before).
void cub_select_if(benchmark::State& state) {
  ekv::Stream stream;
  SelectInputs data(stream);
  const ekv::AboveMagnitude keep{static_cast<float>(state.range(0)) / 100.0f};
  const auto items = static_cast<std::int64_t>(kSelectItems);
  std::size_t bytes = 0;
  EKV_CUDA_CHECK(
      cub::DeviceSelect::If(nullptr, bytes, data.in.data(), data.out.data(), data.count.data(), items, keep));
  ekv::DeviceBuffer<std::byte> workspace(bytes);
  const double s = ekv::bench::run_timed(state, stream, [&](const ekv::Stream& st) {
    EKV_CUDA_CHECK(cub::DeviceSelect::If(workspace.data(), bytes, data.in.data(), data.out.data(), data.count.data(),
                                         items, keep, st.get()));
  });
  stream.synchronize();
  ekv::bench::report_bandwidth(state, data.moved_bytes(false), s);
}

void select_args(benchmark::internal::Benchmark* b) {
  for (int kept : {50, 90}) {
    for (int with_indices : {0, 1}) b->Args({kept, with_indices});
  }
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
BENCHMARK(cub_select_if)->Arg(50)->Arg(90)->Apply(apply_defaults);
// <warps, loads[, the look-back's waits]>: tiles of 128 warps loads floats; CUB's default
// waits (350 ns between reads, 450 ns after publishing a count) unless named. <4, 16> is
// magnitude_select's default.
BENCHMARK(magnitude_select<8, 4>)->Apply(select_args)->Apply(apply_defaults);
BENCHMARK(magnitude_select<4, 8>)->Apply(select_args)->Apply(apply_defaults);
BENCHMARK(magnitude_select<2, 16>)->Apply(select_args)->Apply(apply_defaults);
BENCHMARK(magnitude_select<4, 16>)->Apply(select_args)->Apply(apply_defaults);
BENCHMARK(magnitude_select<8, 16>)->Apply(select_args)->Apply(apply_defaults);
BENCHMARK(magnitude_select<4, 16, NoWait>)->Apply(select_args)->Apply(apply_defaults);
BENCHMARK(magnitude_select<4, 16, Backoff>)->Apply(select_args)->Apply(apply_defaults);

int main(int argc, char** argv) { return ekv::bench::main(argc, argv); }
