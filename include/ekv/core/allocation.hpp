#pragma once
// What ekv does when memory runs out, and a test hook that makes it run out.
//
// Every buffer ekv allocates for itself (DeviceBuffer, PinnedBuffer, HostBytes, the host
// cache's pools through host_assign) first asks detail::allocation_fails(). A test arms
// the hook with ekv::testing::fail_allocation(n): the n-th allocation from then on (0: the
// next) fails as if the memory were exhausted, taking the same path, with the same error,
// as a real failure. Disarmed (the default) the question costs one relaxed atomic
// increment per allocation, which also counts them (ekv::testing::allocations_made()), so a
// test can fail each allocation of a call in turn. Process-wide, any thread. DeviceBuffer
// also keeps the bytes of GPU memory it holds (ekv::testing::device_bytes_held()): a leak
// check of this process alone, where cudaMemGetInfo counts every process on the GPU.

#include <atomic>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "ekv/core/error.hpp"

namespace ekv {
namespace detail {

struct AllocationFaults {
  std::atomic<long long> countdown{-1};  // allocations to let through before one fails; negative: none fails
  std::atomic<long long> made{0};        // allocations asked for since the process began
  std::atomic<long long> device_bytes{0};  // GPU memory DeviceBuffers hold now
};
inline AllocationFaults& allocation_faults() {
  static AllocationFaults faults;
  return faults;
}

// Whether the allocation about to be made must fail (the test hook's countdown reached it).
inline bool allocation_fails() noexcept {
  AllocationFaults& f = allocation_faults();
  f.made.fetch_add(1, std::memory_order_relaxed);
  long long left = f.countdown.load(std::memory_order_relaxed);
  while (left >= 0) {
    if (f.countdown.compare_exchange_weak(left, left - 1, std::memory_order_relaxed)) return left == 0;
  }
  return false;
}

// DeviceBuffer's accounting of what it holds: + on allocation, - on free.
inline void count_device_bytes(long long bytes) noexcept {
  allocation_faults().device_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

}  // namespace detail

namespace testing {

// The allocation `n` ekv allocations from now fails (0: the next one); negative disarms.
// It fails once: the ones after it succeed again.
inline void fail_allocation(long long n) { detail::allocation_faults().countdown.store(n); }
// ekv allocations asked for so far in this process, failed ones included.
inline long long allocations_made() { return detail::allocation_faults().made.load(); }
// Bytes of GPU memory ekv's DeviceBuffers hold now, in this process (freed stream-ordered
// buffers are counted out when freed, before their stream reaches the free).
inline long long device_bytes_held() { return detail::allocation_faults().device_bytes.load(); }

}  // namespace testing

// Sizes a host vector that ekv keeps (a pool): `count` copies of `value`, or ekv::Error
// "<what>: cannot allocate N bytes of host memory" where the host cannot give them (or the
// test hook says so), with code() cudaErrorMemoryAllocation as every ekv allocation failure
// has, host or device (the C API's EKV_ERROR_OUT_OF_MEMORY).
template <typename T>
void host_assign(std::vector<T>& v, std::size_t count, const T& value, const std::string& what) {
  try {
    if (detail::allocation_fails()) throw std::bad_alloc();
    v.assign(count, value);
  } catch (const std::bad_alloc&) {
    throw Error(what + ": cannot allocate " + std::to_string(count) + " x " + std::to_string(sizeof(T)) +
                " bytes of host memory", cudaErrorMemoryAllocation);
  } catch (const std::length_error&) {
    throw Error(what + ": cannot allocate " + std::to_string(count) + " x " + std::to_string(sizeof(T)) +
                " bytes of host memory (past the vector's largest size)", cudaErrorMemoryAllocation);
  }
}

}  // namespace ekv
