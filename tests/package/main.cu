// A CUDA translation unit on <ekv/ekv.hpp> alone, as an engine's host-side file would be.

#include <cstdio>

#include <ekv/ekv.hpp>

int main() {
  std::printf("ekv %s: %d CUDA device(s) visible\n", ekv::kVersion, ekv::device_count());
  return 0;
}
