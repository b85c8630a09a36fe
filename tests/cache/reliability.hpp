#pragma once
// What the reliability tests (issue 21) share: whether AddressSanitizer is in the build,
// a file's bytes and a file name of this process's own, core/allocation.hpp's hook failing
// each allocation of a call in turn, and work run on several threads at once.

#include <doctest/doctest.h>

#include <unistd.h>

#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "ekv/core/allocation.hpp"
#include "ekv/core/error.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define EKV_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EKV_TEST_UNDER_ASAN 1
#endif
#endif

namespace ekv::test {

// `stem` + "_<pid>" + `extension`, in the working directory: a file no other process
// writes, though several runs of one test binary share the directory (.ci/sanitize-gpu runs
// each binary under four tools at once).
inline std::string scratch_path(const std::string& stem, const std::string& extension = ".safetensors") {
  return stem + "_" + std::to_string(::getpid()) + extension;
}

inline std::vector<char> file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Disarms the hook however a test case ends.
struct DisarmAllocationFaults {
  ~DisarmAllocationFaults() { ekv::testing::fail_allocation(-1); }
};

// Calls f with the hook failing its allocation 0, then 1, ... until f makes fewer
// allocations than that: each failed call must throw ekv::Error saying `says` and leave
// `unchanged()` true. Returns how many allocations f made.
template <typename F, typename Unchanged>
long long fail_each_allocation(F&& f, const char* says, Unchanged&& unchanged) {
  for (long long i = 0;; ++i) {
    INFO("allocation " << i);
    const long long before = ekv::testing::allocations_made();
    ekv::testing::fail_allocation(i);
    bool threw = false;
    try {
      f();
    } catch (const ekv::Error& e) {
      threw = true;
      CHECK_MESSAGE(std::string(e.what()).find(says) != std::string::npos, e.what());
    }
    ekv::testing::fail_allocation(-1);
    const long long made = ekv::testing::allocations_made() - before;
    if (!threw) {
      CHECK(made <= i);  // it succeeded only because the fault came after its last allocation
      return made;
    }
    CHECK(unchanged());
  }
}

// Runs f(i) for i in [0, n) on n threads at once; rethrows the first failure.
template <typename F>
void at_once(int n, F&& f) {
  std::vector<std::exception_ptr> failed(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      try {
        f(i);
      } catch (...) {
        failed[i] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : failed) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace ekv::test
