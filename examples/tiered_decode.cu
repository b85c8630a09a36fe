// Tiered decode: a context eight times larger than its GPU budget. Every block's home is
// pinned host memory; the GPU holds an eighth of the blocks (sinks, window, then the
// blocks selection keeps picking) and every block's anchors. Each step selects on the GPU
// (C = 8), attends the resident blocks there and the others by copy-in or on the CPU,
// whichever the step's cost model says is faster, and promotes what it had to fetch. The
// loop appends a token per step; the last step is checked against ekv's float64 reference
// over the blocks it attended.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ekv/ekv.cuh>

int main() {
  if (ekv::device_count() == 0) {
    std::printf("tiered_decode: no CUDA GPU found; this example runs on a GPU (sm_80 or newer)\n");
    return 0;
  }
  using T = __half;
  constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kBlockLen = 64, kPrefill = 65536, kSteps = 64;
  ekv::TieredConfig config;
  config.q_heads = kQHeads;
  config.kv_heads = kKvHeads;
  config.head_dim = kDim;
  config.block_len = kBlockLen;
  config.max_seq_len = kPrefill + kSteps;
  config.policy = ekv::ElasticPolicy(ekv::ElasticConfig{}, ekv::ElasticBudget::ratio(8));
  const std::size_t block_elems = std::size_t{kKvHeads} * kBlockLen * kDim;
  config.gpu_budget_bytes = 2 * block_elems * sizeof(T) * (kPrefill / kBlockLen) / 8;
  ekv::CPUInfer pool(4);
  const ekv::Stream stream;
  ekv::TieredKVCache<T> cache(config, pool, ekv::DeviceInfo::current(), stream);

  // the prefill, written to the host homes; a copy kept here for the reference
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const int blocks = cache.max_blocks_per_seq();
  std::vector<T> k(blocks * block_elems), v(blocks * block_elems);
  for (T& x : k) x = __float2half(uniform(rng));
  for (T& x : v) x = __float2half(uniform(rng));
  const std::size_t unit = static_cast<std::size_t>(kBlockLen) * kDim;  // one kv head's block
  for (int b = 0; b < blocks; ++b) {
    for (int h = 0; h < kKvHeads; ++h) {
      std::copy_n(k.begin() + (static_cast<std::size_t>(b) * kKvHeads + h) * unit, unit, cache.host_k(0, b, h));
      std::copy_n(v.begin() + (static_cast<std::size_t>(b) * kKvHeads + h) * unit, unit, cache.host_v(0, b, h));
    }
  }
  const std::vector<std::int32_t> prefill = {kPrefill};
  cache.place(prefill, stream);

  std::vector<T> q(kQHeads * kDim), k_new(kKvHeads * kDim), v_new(kKvHeads * kDim);
  for (T& x : q) x = __float2half(uniform(rng));
  ekv::DeviceBuffer<T> q_dev(q.size()), k_dev(k_new.size()), v_dev(v_new.size()), o(q.size());
  ekv::DeviceBuffer<float> lse(kQHeads);
  std::normal_distribution<float> drift(0.0f, 0.02f);
  int host_units = 0, units = 0, promotions = 0, no_copy = 0, cpu_steps = 0;
  for (int step = 0; step < kSteps; ++step) {
    const int len = kPrefill + step;  // the new token's position
    for (int h = 0; h < kKvHeads; ++h) {
      for (int d = 0; d < kDim; ++d) {
        const std::size_t row = (static_cast<std::size_t>(len / kBlockLen) * kKvHeads + h) * kBlockLen;
        const std::size_t at = (row + len % kBlockLen) * kDim + d;
        k[at] = k_new[h * kDim + d] = __float2half(uniform(rng));
        v[at] = v_new[h * kDim + d] = __float2half(uniform(rng));
      }
    }
    for (T& x : q) x = __float2half(__half2float(x) + drift(rng));
    k_dev.copy_from(k_new, stream);
    v_dev.copy_from(v_new, stream);
    q_dev.copy_from(q, stream);
    cache.append(k_dev.data(), v_dev.data(), stream, step);
    const ekv::TieredStepReport r = cache.attn(q_dev.data(), o.data(), lse.data(), stream, step);
    host_units += r.host_units;
    units += r.units;
    promotions += r.promotions_started;
    no_copy += r.host_units == 0;
    cpu_steps += r.cpu_units > 0;
  }
  std::vector<T> got(q.size());
  o.copy_to(got, stream);
  stream.synchronize();
  pool.sync();

  // the float64 reference over the blocks the last step attended
  const int max_attended = cache.elastic().max_attended();
  std::vector<std::int32_t> attended(kKvHeads * max_attended), counts(kKvHeads), lengths(kKvHeads);
  EKV_CUDA_CHECK(cudaMemcpy(attended.data(), cache.elastic().attended(), attended.size() * 4, cudaMemcpyDeviceToHost),
                 "tiered_decode: the selection");
  EKV_CUDA_CHECK(cudaMemcpy(counts.data(), cache.elastic().num_attended(), counts.size() * 4, cudaMemcpyDeviceToHost),
                 "tiered_decode: the selection");
  const int len = cache.length(0);
  for (int h = 0; h < kKvHeads; ++h) {
    lengths[h] = 0;
    for (int j = 0; j < counts[h]; ++j) {
      lengths[h] += ekv::block_valid_tokens(len, kBlockLen, attended[h * max_attended + j]);
    }
  }
  std::vector<std::int32_t> identity(blocks), whole_len = {len};
  for (int b = 0; b < blocks; ++b) identity[b] = b;
  const ekv::KVView<T> whole = ekv::paged_kv<T>(k.data(), v.data(), identity.data(), whole_len.data(), 1, kKvHeads,
                                                kDim, kBlockLen, blocks);
  const ekv::KVView<T> selected = ekv::block_sparse_view<T>(whole, attended.data(), lengths.data(), max_attended);
  const auto reference = ekv::reference_decode(selected, q.data(), kQHeads, 1.0 / std::sqrt(double{kDim}));
  const ekv::L2Error error = ekv::relative_l2_error(got.data(), reference, kDim);
  std::printf("tiered_decode: %d tokens, %d GPU slots of %d kv head(s) for %d blocks of %d (1/8), C = 8, %d steps: "
              "%.1f%% of the attended units were on the host at their step, %d steps without any, %d used the CPU, "
              "%d promotions; last step against float64 over its blocks: %.2e (worst head %.2e)\n",
              len, cache.gpu_slots(), cache.slot_kv_heads(), ekv::sequence_blocks(len, kBlockLen), kKvHeads, kSteps,
              units > 0 ? 100.0 * host_units / units : 0.0, no_copy, cpu_steps, promotions, error.pooled,
              error.worst);
  return error.worst < 2e-3 ? 0 : 1;
}
