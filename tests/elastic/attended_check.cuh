#pragma once
// What the elastic GPU tests share: an ElasticDecode's attended rows against the blocks a
// reference chose.

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include "ekv/core/error.hpp"
#include "ekv/elastic/elastic_decode.cuh"

namespace ekv::test {

// expected [batch][granule]: ascending logical blocks per granule (one per layer for
// LAYER, else per row); the step's rows are q_heads per sequence under QHEAD, else kv_heads.
template <typename T>
void check_attended(const ElasticDecode<T>& step, const std::vector<std::vector<std::vector<int>>>& expected,
                    int batch, int rows_per_seq, RetrievalType retrieval) {
  const int rows = batch * rows_per_seq;
  std::vector<std::int32_t> attended(static_cast<std::size_t>(rows) * step.max_attended()), counts(rows);
  EKV_CUDA_CHECK(cudaMemcpy(attended.data(), step.attended(), attended.size() * 4, cudaMemcpyDeviceToHost));
  EKV_CUDA_CHECK(cudaMemcpy(counts.data(), step.num_attended(), counts.size() * 4, cudaMemcpyDeviceToHost));
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < rows_per_seq; ++h) {
      const auto& want = expected[b][retrieval == RetrievalType::kLayer ? 0 : h];
      const std::size_t row = static_cast<std::size_t>(b) * rows_per_seq + h;
      REQUIRE(counts[row] == static_cast<int>(want.size()));
      for (std::size_t j = 0; j < want.size(); ++j) CHECK(attended[row * step.max_attended() + j] == want[j]);
    }
  }
}

}  // namespace ekv::test
