#pragma once
// The C API's argument checks: each names the argument, its value and what is accepted,
// and throws StatusError(EKV_ERROR_INVALID_ARGUMENT); guarded() prefixes the function.

#include <cmath>
#include <cstdint>
#include <cstddef>
#include <limits>
#include <string>

#include "ekv/c_api.h"
#include "ekv/c_api/status.hpp"

namespace ekv::capi {

[[noreturn]] inline void reject(const std::string& message) {
  throw StatusError(EKV_ERROR_INVALID_ARGUMENT, message);
}

// `what`: what the pointer must point to, e.g. "seq_length * hidden_size floats".
inline void require_pointer(const void* p, const char* name, const char* what) {
  if (p == nullptr) reject(std::string(name) + " is NULL; it must point to " + what);
}

inline void require_at_least(int value, int min, const char* name) {
  if (value < min) {
    reject(std::string(name) + "=" + std::to_string(value) + " not supported; supported: >= " + std::to_string(min));
  }
}

inline void require_not_nan(float value, const char* name) {
  if (std::isnan(value)) reject(std::string(name) + "=nan not supported; supported: any other float");
}

// a * b for two checked-positive ints, rejected where it exceeds INT_MAX (`why` says why
// the result must fit an int, e.g. that the outputs count in int).
inline int int_product(int a, const char* a_name, int b, const char* b_name, const char* why) {
  const std::int64_t product = static_cast<std::int64_t>(a) * b;
  if (product > std::numeric_limits<int>::max()) {
    reject(std::string(a_name) + " * " + b_name + " = " + std::to_string(a) + " * " + std::to_string(b) + " = " +
           std::to_string(product) + " overflows int; supported: at most " +
           std::to_string(std::numeric_limits<int>::max()) + " (" + why + ")");
  }
  return static_cast<int>(product);
}

// A C enum's value and its name, for the lists an error prints.
struct NamedValue {
  int value;
  const char* name;
};

// Throws unless `value` is one of `values`: "<name>=7 not supported; supported:
// EKV_DTYPE_FLOAT32 (0), EKV_DTYPE_FLOAT16 (1), ...".
template <std::size_t N>
void require_one_of(int value, const std::string& name, const NamedValue (&values)[N]) {
  std::string supported;
  for (const NamedValue& v : values) {
    if (v.value == value) return;
    supported += (supported.empty() ? "" : ", ") + std::string(v.name) + " (" + std::to_string(v.value) + ")";
  }
  reject(name + "=" + std::to_string(value) + " not supported; supported: " + supported);
}

}  // namespace ekv::capi
