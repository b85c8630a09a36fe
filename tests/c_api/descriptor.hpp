#pragma once
// An ekv_tensor (c_api.h) over a test's array, row-major, with the shape it points to.

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "ekv/c_api.h"

namespace ekv::test {

struct Descriptor {
  template <typename T>
  Descriptor(T* data, std::vector<std::int64_t> dims, int dtype, int device_type = EKV_DEVICE_CPU)
      : shape(std::move(dims)) {
    t.data = const_cast<std::remove_const_t<T>*>(data);  // an input is only read
    t.dtype = dtype;
    t.ndim = static_cast<int>(shape.size());
    t.shape = shape.data();
    t.strides = nullptr;
    t.device_type = device_type;
    t.device_id = 0;
  }
  Descriptor(const Descriptor&) = delete;  // t.shape points into this object's shape
  Descriptor& operator=(const Descriptor&) = delete;
  std::vector<std::int64_t> shape;
  ekv_tensor t{};
};

}  // namespace ekv::test
