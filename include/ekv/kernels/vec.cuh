#pragma once
// Vec<T, Bytes>: the register image of one aligned vector load (16 bytes by default,
// the widest single load a thread can issue), and loads that bypass L1 for streams.

#include <cstddef>
#include <cstdint>

namespace ekv {

template <typename T, int Bytes = 16>
struct alignas(Bytes) Vec {
  static_assert(Bytes % sizeof(T) == 0, "a vector holds whole elements");
  static constexpr int kSize = Bytes / static_cast<int>(sizeof(T));
  T v[kSize];

  __device__ T& operator[](int i) { return v[i]; }
  __device__ const T& operator[](int i) const { return v[i]; }
};

template <typename T, int Bytes = 16>
inline constexpr int kVecSize = Vec<T, Bytes>::kSize;

// True where a vector access at `p` is aligned; launchers pick the vector path with it.
template <int Bytes>
inline bool is_aligned(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % Bytes == 0;
}

// Read-only load through the non-coherent path that does not allocate in L1: data read
// once (a KV stream) should not evict what is reused.
template <typename T, int Bytes>
__device__ __forceinline__ Vec<T, Bytes> load_stream(const T* p) {
  Vec<T, Bytes> out;
  if constexpr (Bytes == 16) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    *reinterpret_cast<uint4*>(&out) = r;
  } else {
    out = *reinterpret_cast<const Vec<T, Bytes>*>(p);
  }
  return out;
}

template <typename T, int Bytes>
__device__ __forceinline__ Vec<T, Bytes> load(const T* p) {
  return *reinterpret_cast<const Vec<T, Bytes>*>(p);
}

template <typename T, int Bytes>
__device__ __forceinline__ void store(T* p, const Vec<T, Bytes>& v) {
  *reinterpret_cast<Vec<T, Bytes>*>(p) = v;
}

// Store marked evict-first: written once and not read back soon (a copy's destination).
template <typename T, int Bytes>
__device__ __forceinline__ void store_stream(T* p, const Vec<T, Bytes>& v) {
  if constexpr (Bytes == 16) {
    const uint4 r = *reinterpret_cast<const uint4*>(&v);
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(r.x), "r"(r.y), "r"(r.z),
                 "r"(r.w)
                 : "memory");
  } else {
    store<T, Bytes>(p, v);
  }
}

}  // namespace ekv
