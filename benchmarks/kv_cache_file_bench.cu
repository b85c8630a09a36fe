// dump_kvcache and load_kvcache of a cache of about 4 GiB (32 layers, 8/32 heads, dim 128,
// block 64, fp16, QUEST anchors), on the GPU (KVCache) and on the CPU backend
// (HostKVCache), against the disk's own speed measured in the same run, in the same
// directory, on a file of the same size:
// - disk write: the bytes written with 64 MiB write() calls into a new file, then fsync;
// - disk read: that file read back with 64 MiB read() calls after its pages were dropped
//   from the page cache (fdatasync, then posix_fadvise DONTNEED).
// A dump includes its fsync and rename; before every load the dump's pages are dropped
// the same way, so that loads read the disk. Each repeat runs every operation once, in
// turn; the table gives medians over the repeats, in seconds and GB/s, and each
// operation's speed as a fraction of the disk's (write for dumps, read for loads).
// Usage: ekv_kv_cache_file_bench DIR [repeats]

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <ekv/ekv.cuh>

#include "harness/random_fill.cuh"

namespace {

constexpr int kLayers = 32, kKvHeads = 8, kDim = 128, kBlockLen = 64, kBlocks = 500;
constexpr std::size_t kChunk = std::size_t{64} << 20;

ekv::KVCacheConfig bench_config() {
  ekv::KVCacheConfig c = ekv::parse_kv_cache_config(
      "layer_num=32 kv_head_num=8 q_head_num=32 head_dim=128 block_len=64 anchor_type=quest kv_type=fp16 "
      "max_batch_size=1");
  c.max_block_num = kBlocks;
  c.max_thread_num = static_cast<int>(std::max(1u, std::min(32u, std::thread::hardware_concurrency())));
  return c;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "kv_cache_file_bench: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

double median_of(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x.size() % 2 == 1 ? x[x.size() / 2] : 0.5 * (x[x.size() / 2 - 1] + x[x.size() / 2]);
}

double seconds(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The file's pages leave the page cache, so that the next read comes from the disk.
void drop_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("open " + path);
  if (::fdatasync(fd) != 0) fail("fdatasync " + path);
  if (::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0) fail("posix_fadvise " + path);
  ::close(fd);
}

void write_file(const std::string& path, const unsigned char* data, std::size_t bytes) {
  ::unlink(path.c_str());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("create " + path);
  for (std::size_t at = 0; at < bytes;) {
    const ssize_t n = ::write(fd, data + at, std::min(kChunk, bytes - at));
    if (n <= 0) fail("write " + path);
    at += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) fail("fsync " + path);
  ::close(fd);
}

void read_file(const std::string& path, unsigned char* data, std::size_t bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("open " + path);
  for (std::size_t at = 0; at < bytes;) {
    const ssize_t n = ::read(fd, data + at, std::min(kChunk, bytes - at));
    if (n <= 0) fail("read " + path);
    at += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

std::size_t file_bytes(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) fail("stat " + path);
  return static_cast<std::size_t>(st.st_size);
}

// Random prefill of every layer's one sequence, through append (anchors built on the way).
template <typename Cache, typename... Stream>
void prefill(Cache& cache, void* k, void* v, ekv::DeviceKind where, const Stream&... stream) {
  const int tokens = kBlocks * kBlockLen;
  const std::initializer_list<std::int64_t> shape = {1, tokens, kKvHeads, kDim};
  for (int layer = 0; layer < kLayers; ++layer) {
    cache.append(layer, ekv::TensorView::contiguous(k, ekv::DType::kFloat16, shape, where),
                 ekv::TensorView::contiguous(v, ekv::DType::kFloat16, shape, where), stream...);
  }
}

struct Row {
  const char* name;
  const char* against;  // "write" or "read"
  std::vector<double> times;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: ekv_kv_cache_file_bench DIR [repeats]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int repeats = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
  const ekv::KVCacheConfig config = bench_config();
  const bool gpu = ekv::device_count() > 0;
  const std::size_t layer_tokens = std::size_t{1} * kBlocks * kBlockLen * kKvHeads * kDim;

  ekv::HostKVCache host(config);
  {
    std::vector<__half> k(layer_tokens), v(layer_tokens);
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (std::size_t i = 0; i < layer_tokens; ++i) k[i] = __float2half(u(rng)), v[i] = __float2half(u(rng));
    prefill(host, k.data(), v.data(), ekv::DeviceKind::kHost);
  }
  const std::string host_path = dir + "/ekv_bench_host.safetensors", gpu_path = dir + "/ekv_bench_gpu.safetensors";
  const std::string raw_path = dir + "/ekv_bench_raw.bin";
  host.dump_kvcache(host_path);
  const std::size_t bytes = file_bytes(host_path);
  std::vector<unsigned char> raw(bytes), back(bytes);
  {
    std::mt19937_64 rng(11);
    for (std::size_t i = 0; i + 8 <= bytes; i += 8) {
      const std::uint64_t x = rng();
      std::memcpy(raw.data() + i, &x, 8);
    }
  }
  std::printf("kv_cache_file_bench: %s, file of %zu bytes (%.2f GiB), %d repeats, %d CPU threads%s\n", dir.c_str(),
              bytes, bytes / double(1 << 30), repeats, config.max_thread_num, gpu ? "" : ", no GPU: CPU backend only");

  std::unique_ptr<ekv::Stream> stream;
  std::unique_ptr<ekv::KVCache> device_cache, device_fresh;
  if (gpu) {
    stream = std::make_unique<ekv::Stream>();
    device_cache = std::make_unique<ekv::KVCache>(config, ekv::DeviceInfo::current(), *stream);
    device_fresh = std::make_unique<ekv::KVCache>(config, ekv::DeviceInfo::current(), *stream);
    ekv::DeviceBuffer<__half> k(layer_tokens), v(layer_tokens);
    ekv::bench::random_uniform_fill<__half>(k.span(), -1.0f, 1.0f, 1, *stream);
    ekv::bench::random_uniform_fill<__half>(v.span(), -1.0f, 1.0f, 2, *stream);
    prefill(*device_cache, k.data(), v.data(), ekv::DeviceKind::kCuda, *stream);
    stream->synchronize();
  }
  ekv::HostKVCache host_fresh(config);

  std::vector<Row> rows = {{"disk write (write + fsync)", "write", {}},
                           {"disk read (pages dropped)", "read", {}},
                           {"HostKVCache::dump_kvcache", "write", {}},
                           {"HostKVCache::load_kvcache", "read", {}}};
  if (gpu) {
    rows.push_back({"KVCache::dump_kvcache (GPU)", "write", {}});
    rows.push_back({"KVCache::load_kvcache (GPU)", "read", {}});
  }
  for (int r = 0; r < repeats; ++r) {
    rows[0].times.push_back(seconds([&] { write_file(raw_path, raw.data(), bytes); }));
    drop_pages(raw_path);
    rows[1].times.push_back(seconds([&] { read_file(raw_path, back.data(), bytes); }));
    if (back != raw) fail("the raw file read back differs");
    ::unlink(raw_path.c_str());
    rows[2].times.push_back(seconds([&] { host.dump_kvcache(host_path); }));
    drop_pages(host_path);
    rows[3].times.push_back(seconds([&] { host_fresh.load_kvcache(host_path); }));
    if (gpu) {
      ::unlink(host_path.c_str());
      rows[4].times.push_back(seconds([&] { device_cache->dump_kvcache(gpu_path, *stream); }));
      drop_pages(gpu_path);
      rows[5].times.push_back(seconds([&] { device_fresh->load_kvcache(gpu_path, *stream); }));
      ::unlink(gpu_path.c_str());
    }
  }
  // the loads must have brought back what was dumped
  std::vector<__half> a(std::size_t{1} * kKvHeads * kBlockLen * kDim), b(a.size()), c(a.size()), d(a.size());
  for (int block : {0, kBlocks / 2, kBlocks - 1}) {
    const auto view = [&](std::vector<__half>& x) {
      return ekv::TensorView::contiguous(x.data(), ekv::DType::kFloat16, {kKvHeads, kBlockLen, kDim},
                                         ekv::DeviceKind::kHost);
    };
    host.get_kvcache_one_block(view(a), view(b), kLayers - 1, block);
    host_fresh.get_kvcache_one_block(view(c), view(d), kLayers - 1, block);
    if (std::memcmp(a.data(), c.data(), a.size() * 2) != 0 || std::memcmp(b.data(), d.data(), b.size() * 2) != 0) {
      fail("HostKVCache: the loaded block differs from the dumped one");
    }
    if (gpu) {
      device_cache->get_kvcache_one_block(view(a), view(b), kLayers - 1, block, *stream);
      device_fresh->get_kvcache_one_block(view(c), view(d), kLayers - 1, block, *stream);
      if (std::memcmp(a.data(), c.data(), a.size() * 2) != 0 || std::memcmp(b.data(), d.data(), b.size() * 2) != 0) {
        fail("KVCache: the loaded block differs from the dumped one");
      }
    }
  }
  ::unlink(host_path.c_str());

  const double write_s = median_of(rows[0].times), read_s = median_of(rows[1].times);
  std::printf("\n%-30s %10s %10s %10s %10s %12s\n", "operation", "median s", "min s", "max s", "GB/s", "of disk");
  for (const Row& row : rows) {
    const double s = median_of(row.times);
    const double disk = std::strcmp(row.against, "write") == 0 ? write_s : read_s;
    std::printf("%-30s %10.3f %10.3f %10.3f %10.2f %11.2f%s\n", row.name, s,
                *std::min_element(row.times.begin(), row.times.end()),
                *std::max_element(row.times.begin(), row.times.end()), bytes / s / 1e9, disk / s,
                std::strcmp(row.against, "write") == 0 ? " (of write)" : " (of read)");
  }
  return 0;
}
