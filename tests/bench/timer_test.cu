// The timer's mechanics (sample count, order, options); never its numbers.

#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "ekv/kernels/fill.cuh"
#include "harness/timer.cuh"

TEST_CASE("time_ms runs warm-up plus repetitions and returns one positive sample each") {
  ekv::Stream stream;
  ekv::DeviceBuffer<float> a(1 << 20);
  for (bool graph : {false, true}) {
    for (bool flush : {false, true}) {
      INFO("graph=" << graph << " flush=" << flush);
      int issued = 0;
      ekv::bench::TimingOptions options;
      options.warmup = 2;
      options.repetitions = 7;
      options.graph = graph;
      options.flush_l2 = flush;
      const std::vector<double> samples = ekv::bench::time_ms(stream, [&](const ekv::Stream& s) {
        ++issued;
        ekv::fill<float>(a.span(), 1.0f, s);
      }, options);
      CHECK(samples.size() == 7);
      CHECK(issued == (graph ? 1 : 9));  // a graph is captured once and replayed
      for (double ms : samples) CHECK((std::isfinite(ms) && ms > 0.0));
    }
  }
  CHECK_THROWS_AS(ekv::bench::time_ms(stream, [](const ekv::Stream&) {}, ekv::bench::TimingOptions{0, 0, false, false}),
                  ekv::Error);
}
