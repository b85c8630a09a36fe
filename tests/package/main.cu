// Uses ekv from an installed tree: a header from each layer so far, one kernel.

#include <cstdio>
#include <vector>

#include "ekv/bench/json.hpp"
#include "ekv/core/device_buffer.hpp"
#include "ekv/core/version.hpp"
#include "ekv/kernels/fill.cuh"

int main() {
  std::printf("ekv %s\n", ekv::kVersion);
  if (ekv::device_count() == 0) {
    std::printf("no CUDA GPU visible; built and linked against ekv\n");
    return 0;
  }
  ekv::Stream stream;
  ekv::DeviceBuffer<float> buffer(1000);
  ekv::fill<float>(buffer.span(), 2.0f, stream);
  std::vector<float> host(buffer.size());
  buffer.copy_to(host, stream);
  stream.synchronize();
  std::printf("%s\n", nlohmann::json(ekv::DeviceInfo::current()).dump().c_str());
  return host.back() == 2.0f ? 0 : 1;
}
