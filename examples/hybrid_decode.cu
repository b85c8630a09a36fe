// Hybrid decode: a cache whose blocks live partly in GPU memory and partly in pinned host
// memory, as when a context outgrows the GPU's budget. place_blocks decides where each
// block goes (sinks and window first on the GPU); one HybridDecode step attends to the
// GPU's blocks on the GPU and the host's on the CPU at once and merges the two through
// their LSE, checked against ekv's float64 reference.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <ekv/ekv.cuh>

int main() {
  if (ekv::device_count() == 0) {
    std::printf("hybrid_decode: no CUDA GPU found; this example runs on a GPU (sm_80 or newer)\n");
    return 0;
  }
  using T = __half;
  constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kBlockLen = 64, kLen = 16384;  // batch 1
  constexpr int kBlocks = kLen / kBlockLen;
  constexpr std::size_t kBlockElems = std::size_t{kKvHeads} * kBlockLen * kDim;  // one block's K (or V)
  const ekv::Stream stream;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  const auto random = [&](std::size_t n) {
    std::vector<T> x(n);
    for (T& e : x) e = __float2half(uniform(rng));
    return x;
  };
  // the whole sequence, block by block: K and V [blocks][kv_heads][block_len][head_dim]
  std::vector<T> k = random(kBlocks * kBlockElems), v = random(kBlocks * kBlockElems), q = random(kQHeads * kDim);
  std::vector<std::int32_t> lengths = {kLen};

  // a GPU budget of a quarter of the blocks; the rest stays in pinned host memory
  const std::size_t block_bytes = 2 * kBlockElems * sizeof(T);
  const ekv::Placement placement = ekv::place_blocks({1, 4}, lengths, kBlockLen, kBlocks, block_bytes,
                                                     block_bytes * kBlocks / 4);
  const std::vector<std::int32_t> table = ekv::number_hybrid_blocks(placement, lengths, kBlockLen, kBlocks);
  std::vector<T> gpu_k(placement.gpu_blocks * kBlockElems), gpu_v(gpu_k.size());
  ekv::PinnedBuffer<T> host_k(placement.host_blocks * kBlockElems), host_v(placement.host_blocks * kBlockElems);
  for (int b = 0; b < kBlocks; ++b) {  // each block to the pool the table names
    const bool on_host = ekv::is_host_entry(table[b]);
    const std::size_t at = (on_host ? ekv::host_block_of(table[b]) : table[b]) * kBlockElems;
    std::copy_n(k.begin() + b * kBlockElems, kBlockElems, (on_host ? host_k.data() : gpu_k.data()) + at);
    std::copy_n(v.begin() + b * kBlockElems, kBlockElems, (on_host ? host_v.data() : gpu_v.data()) + at);
  }
  ekv::DeviceBuffer<T> gpu_k_dev(gpu_k.size()), gpu_v_dev(gpu_v.size()), q_dev(q.size()), o(q.size());
  ekv::DeviceBuffer<float> lse(kQHeads);
  gpu_k_dev.copy_from(gpu_k);
  gpu_v_dev.copy_from(gpu_v);
  q_dev.copy_from(q);

  ekv::HybridKV<T> kv;
  kv.gpu_k = gpu_k_dev.data();
  kv.gpu_v = gpu_v_dev.data();
  kv.host_k = host_k.data();
  kv.host_v = host_v.data();
  kv.block_table = table.data();  // read on the host
  kv.lengths = lengths.data();
  kv.gpu_blocks = placement.gpu_blocks;
  kv.host_blocks = placement.host_blocks;
  kv.batch = 1;
  kv.kv_heads = kKvHeads;
  kv.head_dim = kDim;
  kv.block_len = kBlockLen;
  kv.max_blocks_per_seq = kBlocks;

  ekv::CPUInfer pool(4);  // the CPU side's threads
  const ekv::DecodeProblem problem{ekv::DType::kFloat16, 1, kQHeads, kKvHeads, kDim, kLen};
  ekv::HybridDecode<T> hybrid(problem, kBlockLen, kBlocks, pool, ekv::DeviceInfo::current(), stream);
  const ekv::HybridSplit split = hybrid.run(kv, q_dev.data(), o.data(), lse.data(), stream);
  std::vector<T> got(q.size());
  o.copy_to(got, stream);
  stream.synchronize();
  pool.sync();  // rethrows what the CPU side threw, if anything

  // the same sequence with every block in place, attended in float64
  std::vector<std::int32_t> identity(kBlocks);
  for (int b = 0; b < kBlocks; ++b) identity[b] = b;
  const ekv::KVView<T> whole = ekv::paged_kv<T>(k.data(), v.data(), identity.data(), lengths.data(), 1, kKvHeads,
                                                kDim, kBlockLen, kBlocks);
  const auto reference = ekv::reference_decode(whole, q.data(), kQHeads, 1.0 / std::sqrt(double{kDim}));
  const ekv::L2Error error = ekv::relative_l2_error(got.data(), reference, kDim);
  std::printf("hybrid_decode: %d blocks on the GPU, %d on the host (%lld and %lld tokens per kv head); relative "
              "error against float64 %.2e (worst head %.2e)\n",
              placement.gpu_blocks, placement.host_blocks, static_cast<long long>(split.gpu_tokens),
              static_cast<long long>(split.host_tokens), error.pooled, error.worst);
  return error.worst < 2e-3 ? 0 : 1;
}
