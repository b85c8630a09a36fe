#pragma once
// Paired timing of two variants of the same work: sample i of each is taken side by side,
// so that drift (clocks, temperature, other tenants) lands on both alike.

#include <vector>

namespace ekv::bench {

struct PairedSamples {
  std::vector<double> a, b;  // seconds per sample, in the order taken
};

// a() and b() each take one sample and return its seconds; reset(), if the work needs its
// inputs restored between samples, runs untimed before each. First `warmup` untimed pairs,
// then `reps` timed ones: interleaved (a, b, a, b, ...), or with interleave false all of
// a's samples before b's (to see what pairing changes).
template <typename A, typename B, typename Reset>
PairedSamples paired_samples(int warmup, int reps, bool interleave, A&& a, B&& b, Reset&& reset) {
  PairedSamples out;
  for (int i = 0; i < warmup; ++i) {
    reset();
    a();
    reset();
    b();
  }
  if (interleave) {
    for (int i = 0; i < reps; ++i) {
      reset();
      out.a.push_back(a());
      reset();
      out.b.push_back(b());
    }
  } else {
    for (int i = 0; i < reps; ++i) {
      reset();
      out.a.push_back(a());
    }
    for (int i = 0; i < reps; ++i) {
      reset();
      out.b.push_back(b());
    }
  }
  return out;
}

}  // namespace ekv::bench
