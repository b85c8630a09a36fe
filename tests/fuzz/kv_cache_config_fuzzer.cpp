// KVCacheConfig's text form on any bytes, as C++ and the C API (ekv_cache_config_parse,
// _validate, _to_string: c_api/cache_config.hpp under guarded()) take it. Parsing succeeds
// or throws ekv::Error; the C calls answer EKV_SUCCESS or EKV_ERROR_INVALID_ARGUMENT, never
// EKV_ERROR_INTERNAL (something other than ekv::Error escaped); a parsed config's text
// parses back to it; a valid config's sizes (what a cache allocates by) are computed
// without overflow.

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "ekv/c_api.h"
#include "ekv/c_api/cache_config.hpp"
#include "ekv/c_api/status.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/kv_cache_file.hpp"
#include "ekv/core/error.hpp"

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

void require_not_internal(ekv_status status) {
  require(status == EKV_SUCCESS || status == EKV_ERROR_INVALID_ARGUMENT);
}

// What a cache of a valid config computes from it before it allocates, each byte count
// against the same product taken exactly (in 128 bits): a count that wrapped would size a
// pool smaller than the offsets into it.
void sizes_of(const ekv::KVCacheConfig& c) {
  using Exact = unsigned __int128;
  const Exact heads = static_cast<Exact>(c.max_block_num) * static_cast<Exact>(c.kv_head_num);
  const Exact anchor_values = c.anchor_type == ekv::AnchorKind::kQuest ? Exact{2} * c.head_dim
                              : c.anchor_type == ekv::AnchorKind::kFixed || c.anchor_type == ekv::AnchorKind::kDynamic
                                  ? static_cast<Exact>(c.anchor_num) * static_cast<Exact>(c.head_dim)
                                  : Exact{static_cast<unsigned>(c.head_dim)};
  require(static_cast<Exact>(c.anchor_values()) == anchor_values);
  const ekv::KVCacheLayerSizes size(c);
  require(size.kv == static_cast<Exact>(c.max_block_num) * c.block_bytes());
  require(size.anchors == heads * anchor_values * ekv::dtype_size(c.value_type()));
  require(size.importance == heads * static_cast<Exact>(c.block_len) * sizeof(float));
  require(static_cast<Exact>(c.max_seq_len()) ==
          static_cast<Exact>(c.max_seq_block_num()) * static_cast<Exact>(c.block_len));
  require(ekv::supports(c.decode_problem(c.max_batch_size)).ok);
  require(c.elastic_config().validate().ok);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const ekv::KVCacheConfig c = ekv::parse_kv_cache_config(text);
    require(ekv::parse_kv_cache_config(ekv::to_string(c)) == c);
    if (c.validate()) sizes_of(c);
  } catch (const ekv::Error&) {
  }

  // the C API reads the text up to its first NUL
  ekv_cache_config config{};
  const ekv_status parsed =
      ekv::capi::guarded("ekv_cache_config_parse", [&] { ekv::capi::config_parse(text.c_str(), &config); });
  require_not_internal(parsed);
  if (parsed != EKV_SUCCESS) return 0;
  require_not_internal(ekv::capi::guarded("ekv_cache_config_validate",
                                          [&] { (void)ekv::capi::valid_config(&config, "config"); }));
  const std::string expected = ekv::to_string(ekv::capi::from_c(&config, "config"));
  std::vector<char> out(expected.size() + 1);
  require(ekv::capi::guarded("ekv_cache_config_to_string", [&] {
            ekv::capi::config_to_string(&config, out.data(), out.size());
          }) == EKV_SUCCESS);
  require(expected == out.data());
  require(ekv::capi::guarded("ekv_cache_config_to_string", [&] {
            ekv::capi::config_to_string(&config, out.data(), out.size() - 1);
          }) == EKV_ERROR_INVALID_ARGUMENT);
  return 0;
}
