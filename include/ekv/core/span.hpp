#pragma once
// Span<T>: a pointer and an element count, for host and device memory alike (C++17 has
// no std::span, and kernels need a POD view).

#include <cstddef>
#include <type_traits>
#include <vector>

#include "ekv/core/host_device.hpp"

namespace ekv {

template <typename T>
struct Span {
  T* ptr = nullptr;
  std::size_t count = 0;

  constexpr Span() = default;
  constexpr Span(T* data, std::size_t size) : ptr(data), count(size) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
  constexpr Span(Span<U> other) : ptr(other.ptr), count(other.count) {}
  template <typename U, typename A,
            typename = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]>>>
  Span(std::vector<U, A>& v) : ptr(v.data()), count(v.size()) {}
  template <typename U, typename A,
            typename = std::enable_if_t<std::is_convertible_v<const U (*)[], T (*)[]>>>
  Span(const std::vector<U, A>& v) : ptr(v.data()), count(v.size()) {}

  EKV_HOST_DEVICE constexpr T* data() const { return ptr; }
  EKV_HOST_DEVICE constexpr std::size_t size() const { return count; }
  EKV_HOST_DEVICE constexpr std::size_t size_bytes() const { return count * sizeof(T); }
  EKV_HOST_DEVICE constexpr bool empty() const { return count == 0; }
  EKV_HOST_DEVICE constexpr T& operator[](std::size_t i) const { return ptr[i]; }
  constexpr T* begin() const { return ptr; }
  constexpr T* end() const { return ptr + count; }
  constexpr Span subspan(std::size_t offset, std::size_t n) const { return {ptr + offset, n}; }
};

}  // namespace ekv
