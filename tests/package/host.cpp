// A host-only translation unit (the C++ compiler alone, no nvcc) on <ekv/ekv.hpp>: the
// CPU backend's decode over a small contiguous cache, against the float64 reference.

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ekv/ekv.hpp>

int main() {
  constexpr int kQHeads = 8, kKvHeads = 2, kDim = 64, kLen = 300;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> k(kKvHeads * kLen * kDim), v(k.size()), q(kQHeads * kDim), o(q.size());
  for (auto* x : {&k, &v, &q}) {
    for (float& e : *x) e = uniform(rng);
  }
  std::vector<std::int32_t> lengths = {kLen};
  std::vector<float> lse(kQHeads);
  const auto kv = ekv::contiguous_hnd_kv<float>(k.data(), v.data(), lengths.data(), 1, kKvHeads, kDim, kLen);
  ekv::CPUInfer pool(2);
  ekv::cpu_decode<float>(pool, kv, q.data(), kQHeads, o.data(), lse.data());
  const auto reference = ekv::reference_decode(kv, q.data(), kQHeads, 1.0 / std::sqrt(double{kDim}));
  const ekv::L2Error error = ekv::relative_l2_error(o.data(), reference, kDim);
  std::printf("ekv %s on the host: cpu_decode against float64, relative error %.1e\n", ekv::kVersion, error.worst);
  return error.worst < 1e-5 ? 0 : 1;
}
