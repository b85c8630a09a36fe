// Prints the GPU and its measured ceilings: read-only and copy bandwidth, FMA rate.
// Where there is no GPU it says so and exits 0.

#include <cstdio>
#include <exception>

#include "ekv/core/device.hpp"
#include "harness/ceilings.cuh"

int main() {
  if (ekv::device_count() == 0) {
    std::printf("ekv: no CUDA GPU found (no driver or no device); nothing to measure on the GPU.\n");
    return 0;
  }
  try {
    const ekv::DeviceInfo device = ekv::DeviceInfo::current();
    std::printf("device             %s (compute capability %s, %s)\n", device.name.c_str(),
                device.compute_capability().c_str(), ekv::to_string(device.family));
    std::printf("SMs                %d\n", device.sm_count);
    std::printf("memory             %.1f GiB, L2 %.1f MiB\n", device.global_memory_bytes / 1073741824.0,
                device.l2_cache_bytes / 1048576.0);
    ekv::Stream stream;
    const ekv::bench::ReadCeiling ceiling = ekv::bench::measure_read_ceiling(stream);
    const double read = ceiling.bytes_per_s;
    const double copy = ekv::bench::measure_copy_bandwidth(stream);
    const double memcpy_bw = ekv::bench::measure_memcpy_bandwidth(stream);
    const double flops = ekv::bench::measure_fma_throughput(stream);
    std::printf("read bandwidth     %.0f GB/s (the best of %d read kernels over 4 GiB, median of 20: %s)\n",
                read / 1e9, static_cast<int>(ceiling.kernels.size()), ceiling.best.c_str());
    for (const auto& k : ceiling.kernels) std::printf("  %-60s %.0f GB/s\n", k.name.c_str(), k.bytes_per_s / 1e9);
    if (ceiling.theoretical_bytes_per_s > 0) {
      std::printf("DRAM theoretical   %.0f GB/s (memory clock x bus width)\n", ceiling.theoretical_bytes_per_s / 1e9);
    }
    std::printf("copy bandwidth     %.0f GB/s (ekv copy, read + write bytes)\n", copy / 1e9);
    std::printf("cudaMemcpy D2D     %.0f GB/s (read + write bytes); ekv copy at %.3f of it\n", memcpy_bw / 1e9,
                copy / memcpy_bw);
    std::printf("fp32 FMA rate      %.1f TFLOP/s\n", flops / 1e12);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ekv: %s\n", e.what());
    return 1;
  }
  return 0;
}
