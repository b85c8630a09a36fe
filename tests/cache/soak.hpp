#pragma once
// The soak of a KVCache (issue 21), for either backend: four sequences gain a token a step,
// and each is freed and begun again when it reaches a length drawn for it, so the pool's
// blocks are given out and taken back all the time. Checked: the allocator's accounting
// at every step (the blocks in use are the sequences' blocks, and none is lost), exact
// attn every 1,000 steps against the float64 reference over a shadow of the tokens (no
// drift: half's tolerance, tests/cache/kv_cache_checks.hpp), and the resident memory from
// the first thousand steps to the end (flat: no leak; left to LeakSanitizer in a sanitized
// build, whose quarantine grows the process on purpose). EKV_SOAK_STEPS overrides the
// step count (100,000).
//
// A backend B has: B::make(config) giving a cache, append(cache, k, v) and attn(cache, q, o,
// lse, step) with host vectors of __half (and float LSEs), free_sequence(cache, seq), and
// device_memory() (tests/device_memory.hpp's; free bytes 0 where it has no device). The
// device's free bytes are checked only where the test has the GPU alone (not
// EKV_TEST_SHARED_GPU); ekv's count of the GPU bytes it holds always.

#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "cache/reliability.hpp"
#include "device_memory.hpp"
#include "ekv/attention/sequence_blocks.hpp"
#include "ekv/cpu/cpu_append.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"


namespace ekv::test {

// Resident bytes of this process (/proc/self/statm's second field), 0 where unreadable.
inline std::size_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long size = 0, resident = 0;
  const int read = std::fscanf(f, "%lu %lu", &size, &resident);
  std::fclose(f);
  return read == 2 ? static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) : 0;
}

inline int soak_steps() {
  const char* steps = std::getenv("EKV_SOAK_STEPS");
  return steps != nullptr && std::atoi(steps) > 0 ? std::atoi(steps) : 100000;
}

template <typename Backend>
void soak() {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  using T = __half;
  ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);
  c.layer_num = 1;
  c.max_batch_size = 4;
  c.max_block_num = 64;  // 16 blocks of 16 tokens a sequence at the longest: the pool holds all four
  const int batch = c.max_batch_size, longest = c.max_block_num / batch * c.block_len;
  auto cache = Backend::make(c);
  ekv::test::Shadow<T> shadow(c, c.max_seq_block_num());
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> length_of(1, longest);
  std::vector<int> target(batch);
  for (int& t : target) t = length_of(rng);

  const std::size_t token_elems = static_cast<std::size_t>(batch) * c.kv_head_num * c.head_dim;
  const int steps = soak_steps();
  constexpr int kCheckEvery = 1000, kWarmSteps = 1000;
  std::size_t resident_warm = 0;
  ekv::test::DeviceMemory device_warm;
  int restarts = 0, checks = 0;
  for (int step = 0; step < steps; ++step) {
    const auto k = ekv::bench::random_uniform<T>(token_elems, -1.0f, 1.0f, seed + 2 * step);
    const auto v = ekv::bench::random_uniform<T>(token_elems, -1.0f, 1.0f, seed + 2 * step + 1);
    Backend::append(*cache, k, v);
    REQUIRE(ekv::cpu_append_kv<T>(shadow.view(0, batch), k.data(), v.data(), 1));

    if (step % kCheckEvery == kCheckEvery - 1) {
      const auto q = ekv::bench::random_uniform<T>(static_cast<std::size_t>(batch) * c.q_head_num * c.head_dim, -1.0f,
                                                   1.0f, seed + 7 * step);
      std::vector<T> o(q.size(), ekv::DTypeTraits<T>::from_float(std::numeric_limits<float>::quiet_NaN()));
      std::vector<float> lse(static_cast<std::size_t>(batch) * c.q_head_num, std::nanf(""));
      Backend::attn(*cache, q, o, lse, step);
      INFO("step " << step);
      ekv::test::check_exact(shadow, 0, batch, q.data(), o.data(), lse.data());
      ++checks;
    }
    // the sequences that reached their length start again, on whatever blocks are free
    for (int s = 0; s < batch; ++s) {
      if (cache->get_cache_total_len(s) < target[s]) continue;
      Backend::free_sequence(*cache, s);
      shadow.lengths[0][s] = 0;
      target[s] = length_of(rng);
      ++restarts;
    }
    int blocks = 0;
    for (int s = 0; s < batch; ++s) {
      REQUIRE(cache->get_cache_total_len(s) == shadow.lengths[0][s]);
      blocks += ekv::sequence_blocks(shadow.lengths[0][s], c.block_len);
    }
    REQUIRE(cache->memory().blocks_used == blocks);
    if (step == kWarmSteps) {
      resident_warm = resident_bytes();
      device_warm = Backend::device_memory();
    }
  }
  const std::size_t resident_end = resident_bytes();
  const ekv::test::DeviceMemory device_end = Backend::device_memory();
  MESSAGE(steps << " steps, " << restarts << " restarts, " << checks << " checks against float64; resident "
                << resident_warm << " bytes after " << kWarmSteps << " steps, " << resident_end
                << " at the end; device memory free " << device_warm.free_bytes << " then " << device_end.free_bytes
                << ", held by ekv " << device_warm.held << " then " << device_end.held);
  CHECK(restarts > steps / longest);  // the pool's blocks went round many times
  if (steps > kWarmSteps) {  // nothing on the device grew
    CHECK(device_end.held == device_warm.held);
    if (!ekv::test::gpu_is_shared()) CHECK(device_end.free_bytes == device_warm.free_bytes);
  }
#ifndef EKV_TEST_UNDER_ASAN
  // flat: nothing the steps allocate stays (1 MiB of slack for the allocator's own pages)
  if (resident_warm > 0 && steps > kWarmSteps) CHECK(resident_end <= resident_warm + (std::size_t{1} << 20));
#endif
}

}  // namespace ekv::test
