#pragma once
// The one helper that turns runtime values (dtype, head_dim, group size, ...) into
// compile-time parameters. Supported values live in constexpr arrays; supports() and
// dispatch() both read them, so what is checked and what is compiled cannot drift.

#include <cstddef>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include "ekv/core/dtype.hpp"
#include "ekv/core/error.hpp"

namespace ekv {

// The answer of every supports() query: ok, or why not in the words an Error would use.
struct Support {
  bool ok = true;
  std::string why;
  explicit operator bool() const noexcept { return ok; }
};

// Passed to dispatch callables for a DType: `typename decltype(tag)::type` is the element type.
template <typename T>
struct TypeTag {
  using type = T;
};

template <DType D>
struct DTypeOf;
template <>
struct DTypeOf<DType::kFloat32> : TypeTag<float> {};
template <>
struct DTypeOf<DType::kFloat16> : TypeTag<__half> {};
template <>
struct DTypeOf<DType::kBFloat16> : TypeTag<__nv_bfloat16> {};
template <>
struct DTypeOf<DType::kFloat8E4M3> : TypeTag<__nv_fp8_e4m3> {};

namespace detail {

template <typename V>
void print_value(std::ostream& os, const V& v) {
  if constexpr (std::is_enum_v<V>) {
    os << to_string(v);
  } else {
    os << v;
  }
}

template <typename V, std::size_t N>
bool contains(const V (&values)[N], const V& value) {
  for (const V& v : values) {
    if (v == value) return true;
  }
  return false;
}

// The argument dispatch() passes for a listed value: the element type for a DType, the
// value itself as an integral_constant otherwise.
template <auto kValue>
constexpr auto tag_for() {
  if constexpr (std::is_same_v<decltype(kValue), DType>) {
    return TypeTag<typename DTypeOf<kValue>::type>{};
  } else {
    return std::integral_constant<decltype(kValue), kValue>{};
  }
}

template <const auto& kValues, typename V, typename F, std::size_t... I>
decltype(auto) dispatch_impl(const V& value, F&& f, std::index_sequence<I...>) {
  using Result = decltype(f(tag_for<kValues[0]>()));
  // the folds stop at the matching value; their results are not wanted (clang warns)
  if constexpr (std::is_void_v<Result>) {
    (void)((value == kValues[I] ? (f(tag_for<kValues[I]>()), true) : false) || ...);
  } else {
    Result result{};
    (void)((value == kValues[I] ? (result = f(tag_for<kValues[I]>()), true) : false) || ...);
    return result;
  }
}

}  // namespace detail

// "head_dim=96 not supported by decode; supported: [64, 128, 256]"
template <typename V, std::size_t N>
std::string unsupported_message(const char* name, const char* family, const V& value,
                                const V (&values)[N]) {
  std::ostringstream os;
  os << name << "=";
  detail::print_value(os, value);
  os << " not supported by " << family << "; supported: [";
  for (std::size_t i = 0; i < N; ++i) {
    if (i > 0) os << ", ";
    detail::print_value(os, values[i]);
  }
  os << "]";
  return os.str();
}

// Never throws: ok, or the message dispatch() would throw.
template <const auto& kValues, typename V>
Support check_supported(const char* name, const char* family, const V& value) {
  if (detail::contains(kValues, value)) return {};
  return {false, unsupported_message(name, family, value, kValues)};
}

// Calls f(std::integral_constant<V, value>{}) for the listed value equal to `value`, or
// f(TypeTag<T>{}) when V is DType; throws ekv::Error naming the supported values otherwise.
template <const auto& kValues, typename V, typename F>
decltype(auto) dispatch(const char* name, const char* family, const V& value, F&& f) {
  if (!detail::contains(kValues, value)) {
    throw Error(unsupported_message(name, family, value, kValues));
  }
  constexpr std::size_t kCount = sizeof(kValues) / sizeof(kValues[0]);
  return detail::dispatch_impl<kValues>(value, std::forward<F>(f), std::make_index_sequence<kCount>{});
}

}  // namespace ekv
