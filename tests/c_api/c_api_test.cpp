// The C API's argument checks, on any machine: each function rejects NULL pointers, sizes
// out of range and overflowing products with EKV_ERROR_INVALID_ARGUMENT and a message
// that names the function and the argument; a valid call needs a GPU and says so with
// EKV_ERROR_NO_DEVICE where there is none (and succeeds where there is one).

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

#include "ekv/c_api.h"
#include "ekv/core/device.hpp"

namespace {

std::string last_error() { return ekv_last_error(); }

// `status` is INVALID_ARGUMENT and the message starts with "<function>: <expected>".
void check_rejected(ekv_status status, const std::string& function, const std::string& expected) {
  CHECK(status == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error() == function + ": " + expected);
}

void check_rejected_containing(ekv_status status, const std::string& function, const std::string& part) {
  CHECK(status == EKV_ERROR_INVALID_ARGUMENT);
  CHECK(last_error().rfind(function + ": ", 0) == 0);
  CHECK(last_error().find(part) != std::string::npos);
}

// A valid call: EKV_SUCCESS with an empty message on a GPU machine, else NO_DEVICE.
void check_valid(ekv_status status, const std::string& function) {
  if (ekv::device_count() > 0) {
    CHECK(status == EKV_SUCCESS);
    CHECK(last_error().empty());
  } else {
    CHECK(status == EKV_ERROR_NO_DEVICE);
    CHECK(last_error().rfind(function + ": no CUDA device", 0) == 0);
  }
}

const std::string kOverflow = "overflows int; supported: at most 2147483647";

}  // namespace

TEST_CASE("status names, and a success clears the message") {
  CHECK(std::string(ekv_status_name(EKV_SUCCESS)) == "EKV_SUCCESS");
  CHECK(std::string(ekv_status_name(EKV_ERROR_INVALID_ARGUMENT)) == "EKV_ERROR_INVALID_ARGUMENT");
  CHECK(std::string(ekv_status_name(EKV_ERROR_NO_DEVICE)) == "EKV_ERROR_NO_DEVICE");
  CHECK(std::string(ekv_status_name(EKV_ERROR_OUT_OF_MEMORY)) == "EKV_ERROR_OUT_OF_MEMORY");
  CHECK(std::string(ekv_status_name(EKV_ERROR_CUDA)) == "EKV_ERROR_CUDA");
  CHECK(std::string(ekv_status_name(EKV_ERROR_INTERNAL)) == "EKV_ERROR_INTERNAL");
  CHECK(std::string(ekv_status_name(static_cast<ekv_status>(99))) == "unknown ekv_status");
  CHECK(EKV_SUCCESS == 0);  // the older core's callers test for 0 (cudaSuccess)

  float gbps = 0;
  CHECK(ekv_mem_bandwidth(nullptr, nullptr, 1, 1, &gbps) == EKV_ERROR_INVALID_ARGUMENT);
  CHECK_FALSE(last_error().empty());
  char name[64];
  int major = 0, minor = 0;
  std::size_t memory = 0;
  ekv_get_gpu_info(name, &major, &minor, &memory, 64);  // any outcome but a stale message
  CHECK(last_error().find("ekv_mem_bandwidth") == std::string::npos);
}

TEST_CASE("the message is the calling thread's own") {
  float gbps = 0;
  CHECK(ekv_mem_bandwidth(nullptr, nullptr, 1, 1, &gbps) == EKV_ERROR_INVALID_ARGUMENT);
  const std::string here = last_error();
  std::string there;
  std::thread([&] {
    there = ekv_last_error();  // nothing failed on this thread yet
    float data = 0;
    ekv_compute_throughput(&data, 0, 1, &gbps);
  }).join();
  CHECK(there.empty());
  CHECK(last_error() == here);
}

TEST_CASE("ekv_compress checks its arguments") {
  const int n = 6;
  std::vector<float> in(n, 1.0f), out(n);
  std::vector<int> indices(n);
  int kept = 0;
  float avg = 0, sd = 0;
  const std::string f = "ekv_compress";
  check_rejected(ekv_compress(nullptr, out.data(), indices.data(), 0.5f, 2, 3, &kept, 1, 0, &avg, &sd), f,
                 "kv_cache is NULL; it must point to seq_length * hidden_size floats");
  check_rejected(ekv_compress(in.data(), nullptr, indices.data(), 0.5f, 2, 3, &kept, 1, 0, &avg, &sd), f,
                 "compressed_cache is NULL; it must point to room for seq_length * hidden_size floats");
  check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, 3, nullptr, 1, 0, &avg, &sd), f,
                 "compressed_size is NULL; it must point to an int");
  check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, 3, &kept, 1, 0, nullptr, &sd), f,
                 "avg_ms is NULL; it must point to a float");
  check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, 3, &kept, 1, 0, &avg, nullptr), f,
                 "std_ms is NULL; it must point to a float");
  check_rejected(ekv_compress(in.data(), out.data(), indices.data(), std::nanf(""), 2, 3, &kept, 1, 0, &avg, &sd),
                 f, "threshold=nan not supported; supported: any other float");
  for (int bad : {0, -1}) {
    check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, bad, 3, &kept, 1, 0, &avg, &sd), f,
                   "seq_length=" + std::to_string(bad) + " not supported; supported: >= 1");
    check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, bad, &kept, 1, 0, &avg, &sd), f,
                   "hidden_size=" + std::to_string(bad) + " not supported; supported: >= 1");
    check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, 3, &kept, bad, 0, &avg, &sd), f,
                   "repetitions=" + std::to_string(bad) + " not supported; supported: >= 1");
  }
  check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, 3, &kept, 1, -1, &avg, &sd), f,
                 "warmup_iterations=-1 not supported; supported: >= 0");
  // no silent cut: 65536 * 65536 elements cannot be counted in int
  check_rejected(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 65536, 65536, &kept, 1, 0, &avg, &sd), f,
                 "seq_length * hidden_size = 65536 * 65536 = 4294967296 " + kOverflow +
                     " (compressed_size and indices are int)");
  check_valid(ekv_compress(in.data(), out.data(), indices.data(), 0.5f, 2, 3, &kept, 1, 0, &avg, &sd), f);
  check_valid(ekv_compress(in.data(), out.data(), nullptr, 0.5f, 3, 2, &kept, 2, 1, &avg, &sd), f);
  // infinite and negative thresholds are meaningful (keep nothing, keep every non-NaN)
  check_valid(ekv_compress(in.data(), out.data(), nullptr, INFINITY, 3, 2, &kept, 1, 0, &avg, &sd), f);
  check_valid(ekv_compress(in.data(), out.data(), nullptr, -1.0f, 3, 2, &kept, 1, 0, &avg, &sd), f);
}

TEST_CASE("ekv_mem_bandwidth and ekv_mem_bandwidth_batched check their arguments") {
  std::vector<float> in(8, 1.0f), out(8);
  float gbps = 0;
  for (const std::string f : {"ekv_mem_bandwidth", "ekv_mem_bandwidth_batched"}) {
    // the batched form with one batch is the plain one: the same checks, named the same
    auto call = [&](float* i, float* o, int size, int iterations, float* g) {
      return f == "ekv_mem_bandwidth" ? ekv_mem_bandwidth(i, o, size, iterations, g)
                                      : ekv_mem_bandwidth_batched(i, o, size, iterations, 1, g);
    };
    const std::string iterations = f == "ekv_mem_bandwidth" ? "iterations" : "iters_per_launch";
    check_rejected(call(nullptr, out.data(), 8, 2, &gbps), f, "input is NULL; it must point to size floats");
    check_rejected(call(in.data(), nullptr, 8, 2, &gbps), f, "output is NULL; it must point to room for size floats");
    check_rejected(call(in.data(), out.data(), 8, 2, nullptr), f, "gbps is NULL; it must point to a float");
    for (int bad : {0, -5}) {
      check_rejected(call(in.data(), out.data(), bad, 2, &gbps), f,
                     "size=" + std::to_string(bad) + " not supported; supported: >= 1");
      check_rejected(call(in.data(), out.data(), 8, bad, &gbps), f,
                     iterations + "=" + std::to_string(bad) + " not supported; supported: >= 1");
    }
    check_valid(call(in.data(), out.data(), 8, 2, &gbps), f);
  }
  const std::string f = "ekv_mem_bandwidth_batched";
  check_rejected(ekv_mem_bandwidth_batched(in.data(), out.data(), 8, 2, 0, &gbps), f,
                 "num_launches=0 not supported; supported: >= 1");
  check_rejected_containing(ekv_mem_bandwidth_batched(in.data(), out.data(), 8, 100000, 100000, &gbps), f,
                            "iters_per_launch * num_launches = 100000 * 100000 = 10000000000 " + kOverflow);
  check_valid(ekv_mem_bandwidth_batched(in.data(), out.data(), 8, 2, 3, &gbps), f);
}

TEST_CASE("ekv_compute_throughput checks its arguments") {
  std::vector<float> data(300);
  float gflops = 0;
  const std::string f = "ekv_compute_throughput";
  check_rejected(ekv_compute_throughput(nullptr, 300, 64, &gflops), f,
                 "data is NULL; it must point to room for size floats");
  check_rejected(ekv_compute_throughput(data.data(), 300, 64, nullptr), f, "gflops is NULL; it must point to a float");
  check_rejected(ekv_compute_throughput(data.data(), 0, 64, &gflops), f, "size=0 not supported; supported: >= 1");
  check_rejected(ekv_compute_throughput(data.data(), 300, -1, &gflops), f,
                 "ops_per_element=-1 not supported; supported: >= 1");
  check_valid(ekv_compute_throughput(data.data(), 300, 64, &gflops), f);
}

TEST_CASE("ekv_inference_cycle checks its arguments") {
  std::vector<float> in(2 * 128, 1.0f), out(128);
  float exact = 0, elastic = 0;
  const std::string f = "ekv_inference_cycle";
  check_rejected(ekv_inference_cycle(nullptr, out.data(), nullptr, 2, 128, 4, 4.0f, &exact, &elastic), f,
                 "kv_cache is NULL; it must point to seq_length * hidden_size floats");
  check_rejected(ekv_inference_cycle(in.data(), nullptr, nullptr, 2, 128, 4, 4.0f, &exact, &elastic), f,
                 "compressed_cache is NULL; it must point to room for hidden_size floats");
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 128, 4, 4.0f, nullptr, &elastic), f,
                 "baseline_total_ms is NULL; it must point to a float");
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 128, 4, 4.0f, &exact, nullptr), f,
                 "elastic_total_ms is NULL; it must point to a float");
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 0, 128, 4, 4.0f, &exact, &elastic), f,
                 "seq_length=0 not supported; supported: >= 1");
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 0, 4, 4.0f, &exact, &elastic), f,
                 "hidden_size=0 not supported; supported: >= 1");
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 128, 0, 4.0f, &exact, &elastic), f,
                 "decode_steps=0 not supported; supported: >= 1");
  check_rejected_containing(
      ekv_inference_cycle(in.data(), out.data(), nullptr, 65536, 65536, 4, 4.0f, &exact, &elastic), f, kOverflow);
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 96, 4, 4.0f, &exact, &elastic), f,
                 "hidden_size=96 not supported; supported: a multiple of 64 (heads x head_dim, head_dim 128 or 64)");
  // 2^26 tokens at most: 2^20 blocks of 64 (selection's limit)
  check_rejected(ekv_inference_cycle(in.data(), out.data(), nullptr, 1, 64, 1 << 26, 4.0f, &exact, &elastic), f,
                 "seq_length + decode_steps = 67108865 tokens not supported; supported: at most 67108864 "
                 "(1048576 blocks of 64)");
  for (float bad : {0.99f, 0.5f, -2.0f, INFINITY, std::nanf("")}) {
    check_rejected_containing(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 128, 4, bad, &exact, &elastic),
                              f, "not supported; supported: a finite compression ratio C >= 1");
  }
  check_valid(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 128, 4, 4.0f, &exact, &elastic), f);
  check_valid(ekv_inference_cycle(in.data(), out.data(), nullptr, 2, 128, 4, 1.0f, &exact, &elastic), f);
}

TEST_CASE("ekv_inference_cycle_ex checks ekv_inference_cycle's arguments and its own") {
  std::vector<float> in(2 * 128, 1.0f), out(128);
  float exact = 0, elastic = 0, error = 0;
  const std::string f = "ekv_inference_cycle_ex";
  check_rejected(ekv_inference_cycle_ex(in.data(), out.data(), nullptr, 2, 128, 4, 4.0f, &exact, &elastic, nullptr),
                 f, "relative_error is NULL; it must point to a float");
  check_rejected(ekv_inference_cycle_ex(in.data(), out.data(), nullptr, 2, 128, 0, 4.0f, &exact, &elastic, &error),
                 f, "decode_steps=0 not supported; supported: >= 1");
  check_rejected(ekv_inference_cycle_ex(in.data(), out.data(), nullptr, 2, 100, 4, 4.0f, &exact, &elastic, &error),
                 f, "hidden_size=100 not supported; supported: a multiple of 64 (heads x head_dim, head_dim 128 or "
                    "64)");
  check_valid(ekv_inference_cycle_ex(in.data(), out.data(), nullptr, 2, 128, 4, 4.0f, &exact, &elastic, &error), f);
}

TEST_CASE("ekv_get_gpu_info checks its arguments") {
  char name[256];
  int major = 0, minor = 0;
  std::size_t memory = 0;
  const std::string f = "ekv_get_gpu_info";
  check_rejected(ekv_get_gpu_info(nullptr, &major, &minor, &memory, 256), f,
                 "device_name is NULL; it must point to max_name_length chars");
  check_rejected(ekv_get_gpu_info(name, nullptr, &minor, &memory, 256), f,
                 "compute_major is NULL; it must point to an int");
  check_rejected(ekv_get_gpu_info(name, &major, nullptr, &memory, 256), f,
                 "compute_minor is NULL; it must point to an int");
  check_rejected(ekv_get_gpu_info(name, &major, &minor, nullptr, 256), f,
                 "total_memory is NULL; it must point to a size_t");
  check_rejected(ekv_get_gpu_info(name, &major, &minor, &memory, 0), f,
                 "max_name_length=0 not supported; supported: >= 1");
  check_valid(ekv_get_gpu_info(name, &major, &minor, &memory, 256), f);
}

TEST_CASE("ekv_get_device_info checks its arguments") {
  ekv_device_info info;
  check_rejected(ekv_get_device_info(nullptr, 0), "ekv_get_device_info",
                 "info is NULL; it must point to an ekv_device_info");
  check_valid(ekv_get_device_info(&info, 0), "ekv_get_device_info");
}
