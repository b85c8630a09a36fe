// The KV cache object as an engine uses it: a 4-layer KVCache, a 16K-token prompt appended
// layer by layer, decode steps with elastic attention (35 of 257 blocks per kv head), then
// a dump, a load into a fresh cache, and the same further decode steps on both, whose
// outputs must be identical bit for bit.

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <ekv/ekv.cuh>

int main() {
  if (ekv::device_count() == 0) {
    std::printf("kv_cache: no CUDA GPU found; this example runs on a GPU (sm_80 or newer)\n");
    return 0;
  }
  using T = __half;
  ekv::KVCacheConfig config = ekv::parse_kv_cache_config(
      "layer_num=4 kv_head_num=8 q_head_num=32 head_dim=128 block_len=64 anchor_type=QUEST kv_type=FP16 "
      "retrieval_type=KVHEAD max_block_num=300 max_batch_size=1");
  if (ekv::Support s = config.validate(); !s) {
    std::printf("kv_cache: %s\n", s.why.c_str());
    return 1;
  }
  const ekv::Stream stream;
  const ekv::DeviceInfo device = ekv::DeviceInfo::current();
  ekv::KVCache cache(config, device, stream);
  constexpr int kPrompt = 16384, kSteps = 4;
  const int token_elems = config.kv_head_num * config.head_dim, q_elems = config.q_head_num * config.head_dim;
  std::mt19937 rng(5);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  const auto upload = [&](ekv::DeviceBuffer<T>& to, float scale) {
    std::vector<T> x(to.size());
    for (T& e : x) e = __float2half(scale * noise(rng));
    to.copy_from(x, stream);
    stream.synchronize();
  };
  const auto tensor = [&](ekv::DeviceBuffer<T>& b, int tokens) {
    return ekv::TensorView::of(b.data(), {1, tokens, config.kv_head_num, config.head_dim}, ekv::DeviceKind::kCuda);
  };

  ekv::DeviceBuffer<T> k(std::size_t{1} * kPrompt * token_elems), v(k.size());
  for (int layer = 0; layer < config.layer_num; ++layer) {  // prefill
    upload(k, 0.5f);
    upload(v, 1.0f);
    cache.append(layer, tensor(k, kPrompt), tensor(v, kPrompt), stream);
  }
  const ekv::KVCacheMemory memory = cache.memory();
  std::printf("kv_cache: %s\n  %d tokens, %d blocks used, %d free, %.1f MiB per layer, %zu bytes per token\n",
              ekv::to_string(config).c_str(), cache.get_cache_total_len(), memory.blocks_used, memory.blocks_free,
              memory.bytes_per_layer / 1048576.0, memory.bytes_per_token);

  // the decode steps' new tokens and queries, the same for both caches
  ekv::DeviceBuffer<T> k_new(token_elems), v_new(token_elems), q(q_elems), o(q_elems);
  ekv::DeviceBuffer<float> lse(config.q_head_num);
  std::vector<std::vector<T>> inputs;
  for (int i = 0; i < 2 * kSteps * config.layer_num * 3; ++i) {
    std::vector<T> x(q_elems);
    for (T& e : x) e = __float2half(noise(rng));
    inputs.push_back(x);
  }
  const auto decode = [&](ekv::KVCache& c, int first_step) {
    std::vector<T> out, got(q_elems);
    for (int step = 0; step < kSteps; ++step) {
      for (int layer = 0; layer < config.layer_num; ++layer) {
        const std::size_t i = (static_cast<std::size_t>(first_step + step) * config.layer_num + layer) * 3;
        k_new.copy_from(ekv::Span<const T>(inputs[i].data(), token_elems), stream);
        v_new.copy_from(ekv::Span<const T>(inputs[i + 1].data(), token_elems), stream);
        q.copy_from(inputs[i + 2], stream);
        c.append(layer, tensor(k_new, 1), tensor(v_new, 1), stream);
        c.attn(ekv::TensorView::of(q.data(), {1, config.q_head_num, config.head_dim}, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(o.data(), {1, config.q_head_num, config.head_dim}, ekv::DeviceKind::kCuda),
               ekv::TensorView::of(lse.data(), {1, config.q_head_num}, ekv::DeviceKind::kCuda), layer,
               first_step + step, stream, /*pick_block_num*/ 32, /*init_block_num*/ 1, /*local_block_num*/ 2);
        o.copy_to(got, stream);
        stream.synchronize();
        out.insert(out.end(), got.begin(), got.end());
      }
    }
    return out;
  };

  (void)decode(cache, 0);
  const char* path = "kv_cache_example.safetensors";
  cache.dump_kvcache(path, stream);
  ekv::KVCache fresh(config, device, stream);
  fresh.load_kvcache(path, stream);
  const std::vector<T> a = decode(cache, kSteps), b = decode(fresh, kSteps);
  std::remove(path);
  const bool same = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  std::printf("  %d elastic decode steps x %d layers (35 of %d blocks read), dumped, loaded into a fresh cache, "
              "%d more steps on both: outputs %s, %d tokens each\n",
              kSteps, config.layer_num, memory.blocks_used + 1, kSteps, same ? "identical" : "DIFFERENT",
              fresh.get_cache_total_len());
  return same ? 0 : 1;
}
