// Elastic decode as an engine runs it: prefill a prompt into a paged cache, build the
// blocks' anchors, then a decode loop that appends one token, updates the anchors and
// attends to about 1/8 of the blocks each step, beside exact decode for the error.
// The prompt is random except for 8 blocks whose keys lean towards the queries' direction,
// so attention has something to find (on keys with no structure any 1/8 of the blocks
// holds about 1/8 of the attention, and the error says little).

#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include <ekv/ekv.cuh>

int main() {
  if (ekv::device_count() == 0) {
    std::printf("elastic_decode: no CUDA GPU found; this example runs on a GPU (sm_80 or newer)\n");
    return 0;
  }
  using T = __half;
  constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kBlockLen = 64, kPrompt = 16384, kSteps = 8;
  constexpr int kMaxBlocks = (kPrompt + kSteps + kBlockLen - 1) / kBlockLen, kRows = kQHeads;  // batch 1
  const ekv::Stream stream;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  const auto random = [&](std::size_t n, float scale) {
    std::vector<T> x(n);
    for (T& e : x) e = __float2half(scale * noise(rng));
    return x;
  };
  const std::vector<T> direction = random(kKvHeads * kDim, 1.0f);  // what each kv head's queries look for

  // The pool, K and V [blocks][kv_heads][block_len][head_dim]; sequence 0 owns blocks 0, 1, ...
  const std::size_t pool = std::size_t{kMaxBlocks} * kKvHeads * kBlockLen * kDim;
  ekv::DeviceBuffer<T> k(pool), v(pool), q(kRows * kDim), o(kRows * kDim), o_exact(kRows * kDim);
  ekv::DeviceBuffer<float> lse(kRows), lse_exact(kRows);
  ekv::DeviceBuffer<std::int32_t> table(kMaxBlocks), lengths(1), before(1);
  std::vector<std::int32_t> blocks(kMaxBlocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  table.copy_from(blocks);
  lengths.fill_bytes(0, stream);
  const ekv::KVView<T> kv =
      ekv::paged_kv<T>(k.data(), v.data(), table.data(), lengths.data(), 1, kKvHeads, kDim, kBlockLen, kMaxBlocks);

  // Prefill: new tokens come as [batch][tokens][kv_heads][head_dim]
  std::vector<T> k_prompt = random(std::size_t{kPrompt} * kKvHeads * kDim, 0.5f);
  for (int needle = 0; needle < 8; ++needle) {
    // blocks 3, 32, ..., 206: spread over the prompt, away from the sink and the window
    const std::size_t first = static_cast<std::size_t>(3 + needle * 29) * kBlockLen * kKvHeads * kDim;
    for (std::size_t i = first; i < first + std::size_t{kBlockLen} * kKvHeads * kDim; ++i) {
      k_prompt[i] = __float2half(__half2float(k_prompt[i]) + 0.3f * __half2float(direction[i % (kKvHeads * kDim)]));
    }
  }
  ekv::DeviceBuffer<T> k_new(k_prompt.size()), v_new(k_prompt.size());
  k_new.copy_from(k_prompt);
  v_new.copy_from(random(k_prompt.size(), 1.0f));
  ekv::append_kv<T>(kv, k_new.data(), v_new.data(), kPrompt, stream);

  ekv::ElasticProblem problem;
  problem.decode = {ekv::DType::kFloat16, 1, kQHeads, kKvHeads, kDim, kPrompt + kSteps};
  problem.block_len = kBlockLen;
  problem.policy = ekv::ElasticPolicy(ekv::ElasticConfig{}, ekv::ElasticBudget::ratio(8.0));  // QUEST, per kv head
  ekv::ElasticDecode<T> elastic(problem, device, stream);  // throws, naming what is unsupported
  const ekv::DecodePlan exact = ekv::plan_decode(problem.decode, device);
  const auto workspace = ekv::make_decode_workspace(exact, stream);
  ekv::DeviceBuffer<T> anchors(elastic.anchor_elems(kMaxBlocks));
  const ekv::ElasticConfig& config = problem.policy.config();
  ekv::build_anchors<T>(kv, anchors.data(), config, stream);

  std::vector<T> got(kRows * kDim), want(kRows * kDim);
  for (int step = 0; step < kSteps; ++step) {
    // append this step's token, then bring the anchors of the block it landed in up to date
    EKV_CUDA_CHECK(cudaMemcpyAsync(before.data(), lengths.data(), sizeof(std::int32_t), cudaMemcpyDeviceToDevice,
                                   stream.get()), "copy lengths");
    k_new.copy_from(random(kKvHeads * kDim, 0.5f), stream);
    v_new.copy_from(random(kKvHeads * kDim, 1.0f), stream);
    ekv::append_kv<T>(kv, k_new.data(), v_new.data(), 1, stream);
    ekv::update_anchors<T>(kv, anchors.data(), config, before.data(), 1, stream);
    std::vector<T> query(kRows * kDim);  // each query head: its kv head's direction, scaled, plus noise
    for (int i = 0; i < kRows * kDim; ++i) {
      query[i] = __float2half(3.0f * __half2float(direction[(i / kDim) / (kQHeads / kKvHeads) * kDim + i % kDim]) +
                              0.3f * noise(rng));
    }
    q.copy_from(query, stream);
    elastic.run(kv, q.data(), anchors.data(), o.data(), lse.data(), stream, step);
    ekv::run_decode<T>(exact, kv, q.data(), o_exact.data(), lse_exact.data(), workspace.data(), stream);
    o.copy_to(got, stream);
    o_exact.copy_to(want, stream);
    stream.synchronize();
    const ekv::L2Error error = ekv::relative_l2_error(got.data(), want.data(), kRows, kDim);
    std::printf("step %d: %d tokens, %d of %d blocks per kv head read, error against exact %.2e (worst head %.2e)\n",
                step, kPrompt + step + 1, elastic.counts().total(), kMaxBlocks, error.pooled, error.worst);
    if (!(error.worst < 0.1)) return 1;  // the needle blocks hold most of the attention: selection must find them
  }
  return 0;
}
