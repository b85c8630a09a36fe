// Interrupted dumps (issue 21): a HostKVCache dump killed with SIGKILL at random points,
// many times, never costs the file at its path: the path always loads, as the dump that
// was there before or as the new one where a dump got as far as its rename, and a
// leftover temporary file (write_safetensors writes path + ".tmp", fsyncs it and renames
// it over the path) is either refused or the new dump whole. The child process dumps the
// same cache over and over until it is killed; kills land from before its first write to
// past its first rename.

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/kv_cache_checks.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "harness/random.hpp"
#include "test_seed.hpp"

namespace {

// 2 layers of 96 blocks of 64 tokens, 4 kv heads of 128: a 25 MB dump, long enough to be
// killed in the middle of
ekv::KVCacheConfig dump_config() {
  ekv::KVCacheConfig c = ekv::test::small_config(ekv::DType::kFloat16);
  c.layer_num = 2;
  c.kv_head_num = 4;
  c.q_head_num = 16;
  c.head_dim = 128;
  c.block_len = 64;
  c.max_block_num = 96;
  c.max_batch_size = 2;
  return c;
}

// Two sequences of 40 blocks each in every layer, from `seed`.
void fill(ekv::HostKVCache& cache, std::uint64_t seed) {
  const ekv::KVCacheConfig& c = cache.config();
  const int batch = 2, tokens = 40 * c.block_len;
  const std::size_t n = static_cast<std::size_t>(batch) * tokens * c.kv_head_num * c.head_dim;
  for (int layer = 0; layer < c.layer_num; ++layer) {
    const auto k = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 2 * layer);
    const auto v = ekv::bench::random_uniform<__half>(n, -1.0f, 1.0f, seed + 2 * layer + 1);
    cache.append(layer,
                 ekv::TensorView::of(k.data(), {batch, tokens, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost),
                 ekv::TensorView::of(v.data(), {batch, tokens, c.kv_head_num, c.head_dim}, ekv::DeviceKind::kHost));
  }
}

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

// The dump of what loading `path` gives (dumps of equal caches are equal bytes), or
// nothing where the load is refused.
std::vector<char> loaded(const ekv::KVCacheConfig& c, const std::string& path, const std::string& scratch) {
  ekv::HostKVCache cache(c);
  try {
    cache.load_kvcache(path);
  } catch (const ekv::Error&) {
    return {};
  }
  cache.dump_kvcache(scratch);
  return file_bytes(scratch);
}

}  // namespace

TEST_CASE("a dump killed at random points leaves its path loadable and no half-written file that loads") {
  const auto seed = ekv::test::seed();
  INFO("seed=" << seed);
  const ekv::KVCacheConfig c = dump_config();
  const std::string path = "interrupted_dump.safetensors", temporary = path + ".tmp",
                    scratch = "interrupted_dump_check.safetensors";
  ekv::HostKVCache before(c), after(c);
  fill(before, seed);
  fill(after, seed + 1000);
  before.dump_kvcache(path);
  const std::vector<char> old_bytes = file_bytes(path);
  const auto start = std::chrono::steady_clock::now();
  after.dump_kvcache(scratch);
  const auto one_dump = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
  const std::vector<char> new_bytes = file_bytes(scratch);
  REQUIRE(old_bytes != new_bytes);

  std::mt19937_64 rng(seed);
  int became_new = 0, leftovers = 0, leftovers_refused = 0;
  constexpr int kKills = 40;
  for (int i = 0; i < kKills; ++i) {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {  // dump until killed; only the dump runs here (no doctest, no exit handlers)
      ::close(ready[0]);
      const char byte = 'r';
      if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
      try {
        for (;;) after.dump_kvcache(path);
      } catch (...) {
        ::_exit(1);
      }
    }
    ::close(ready[1]);
    char byte = 0;
    REQUIRE(::read(ready[0], &byte, 1) == 1);
    ::close(ready[0]);
    // from at once to one and a half dumps in
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % (one_dump.count() * 3 / 2 + 1)));
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK_MESSAGE(WIFSIGNALED(status), "the dumping child ended on its own, status " << status);

    INFO("kill " << i);
    const std::vector<char> at_path = loaded(c, path, scratch);
    REQUIRE_MESSAGE(!at_path.empty(), "the file at the path no longer loads");
    CHECK((at_path == old_bytes || at_path == new_bytes));
    if (at_path == new_bytes) {
      ++became_new;
      // back to the old dump, so that every kill tests the old file's survival
      before.dump_kvcache(path);
    }
    if (exists(temporary)) {
      ++leftovers;
      const std::vector<char> at_temporary = loaded(c, temporary, scratch);
      CHECK((at_temporary.empty() || at_temporary == new_bytes));
      leftovers_refused += at_temporary.empty();
      std::remove(temporary.c_str());
    }
  }
  MESSAGE(kKills << " kills within " << one_dump.count() * 3 / 2 << " us of a dump of " << new_bytes.size()
                 << " bytes: the path held the new dump after " << became_new << ", a temporary file was left by "
                 << leftovers << " (" << leftovers_refused << " of them refused on load)");
  // some kills landed in the middle of a write: what the test is for
  CHECK(leftovers_refused > 0);
  std::remove(path.c_str());
  std::remove(scratch.c_str());
}
