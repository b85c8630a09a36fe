#pragma once
// ekv_cache_config (c_api.h) and ekv::KVCacheConfig, field for field, and the C calls on
// configs: defaults, the text form both ways, validation.

#include <cstddef>
#include <cstring>
#include <string>

#include "ekv/c_api.h"
#include "ekv/c_api/arguments.hpp"
#include "ekv/c_api/tensor.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/core/error.hpp"
#include "ekv/elastic/elastic_config.hpp"

namespace ekv::capi {

inline constexpr NamedValue kAnchorTypes[] = {
    {EKV_ANCHOR_QUEST, "EKV_ANCHOR_QUEST"}, {EKV_ANCHOR_BLOCK_MEAN, "EKV_ANCHOR_BLOCK_MEAN"},
    {EKV_ANCHOR_BLOCK_MAX, "EKV_ANCHOR_BLOCK_MAX"}, {EKV_ANCHOR_FIXED, "EKV_ANCHOR_FIXED"},
    {EKV_ANCHOR_DYNAMIC, "EKV_ANCHOR_DYNAMIC"}};
inline constexpr NamedValue kRetrievalTypes[] = {
    {EKV_RETRIEVAL_LAYER, "EKV_RETRIEVAL_LAYER"}, {EKV_RETRIEVAL_KVHEAD, "EKV_RETRIEVAL_KVHEAD"},
    {EKV_RETRIEVAL_QHEAD, "EKV_RETRIEVAL_QHEAD"}};

// The C enums' values are ekv's, so that they convert by a cast.
static_assert(EKV_ANCHOR_QUEST == static_cast<int>(AnchorKind::kQuest) &&
                  EKV_ANCHOR_BLOCK_MEAN == static_cast<int>(AnchorKind::kBlockMean) &&
                  EKV_ANCHOR_BLOCK_MAX == static_cast<int>(AnchorKind::kBlockMax) &&
                  EKV_ANCHOR_FIXED == static_cast<int>(AnchorKind::kFixed) &&
                  EKV_ANCHOR_DYNAMIC == static_cast<int>(AnchorKind::kDynamic),
              "ekv_anchor_type mirrors ekv::AnchorKind");
static_assert(EKV_RETRIEVAL_LAYER == static_cast<int>(RetrievalType::kLayer) &&
                  EKV_RETRIEVAL_KVHEAD == static_cast<int>(RetrievalType::kKvHead) &&
                  EKV_RETRIEVAL_QHEAD == static_cast<int>(RetrievalType::kQHead),
              "ekv_retrieval_type mirrors ekv::RetrievalType");

// The int fields of both structs, in one list that both directions read.
struct IntField {
  using CMember = int ekv_cache_config::*;
  using CppMember = int KVCacheConfig::*;
  CMember c;
  CppMember cpp;
};
inline constexpr IntField kIntFields[] = {
    {&ekv_cache_config::layer_num, &KVCacheConfig::layer_num},
    {&ekv_cache_config::kv_head_num, &KVCacheConfig::kv_head_num},
    {&ekv_cache_config::q_head_num, &KVCacheConfig::q_head_num},
    {&ekv_cache_config::head_dim, &KVCacheConfig::head_dim},
    {&ekv_cache_config::block_len, &KVCacheConfig::block_len},
    {&ekv_cache_config::anchor_num, &KVCacheConfig::anchor_num},
    {&ekv_cache_config::layer_step, &KVCacheConfig::layer_step},
    {&ekv_cache_config::token_step, &KVCacheConfig::token_step},
    {&ekv_cache_config::layer_offset, &KVCacheConfig::layer_offset},
    {&ekv_cache_config::max_block_num, &KVCacheConfig::max_block_num},
    {&ekv_cache_config::max_batch_size, &KVCacheConfig::max_batch_size},
    {&ekv_cache_config::max_thread_num, &KVCacheConfig::max_thread_num}};

inline ekv_cache_config to_c(const KVCacheConfig& c) {
  ekv_cache_config out{};
  for (const IntField& f : kIntFields) out.*f.c = c.*f.cpp;
  out.anchor_type = static_cast<int>(c.anchor_type);
  out.kv_type = static_cast<int>(c.kv_type);
  out.retrieval_type = static_cast<int>(c.retrieval_type);
  return out;
}

// The caller's config (the argument `name`); enum fields out of range are rejected here,
// everything else by KVCacheConfig::validate().
inline KVCacheConfig from_c(const ekv_cache_config* config, const char* name) {
  require_pointer(config, name, "an ekv_cache_config");
  const std::string field = std::string(name) + ".";
  require_one_of(config->anchor_type, field + "anchor_type", kAnchorTypes);
  require_one_of(config->kv_type, field + "kv_type", kTensorDTypes);
  require_one_of(config->retrieval_type, field + "retrieval_type", kRetrievalTypes);
  KVCacheConfig c;
  for (const IntField& f : kIntFields) c.*f.cpp = config->*f.c;
  c.anchor_type = static_cast<AnchorKind>(config->anchor_type);
  c.kv_type = static_cast<DType>(config->kv_type);
  c.retrieval_type = static_cast<RetrievalType>(config->retrieval_type);
  return c;
}

// validate()'s message, as an argument error.
inline KVCacheConfig valid_config(const ekv_cache_config* config, const char* name) {
  const KVCacheConfig c = from_c(config, name);
  if (Support s = c.validate(); !s) reject(s.why);
  return c;
}

inline void config_default(ekv_cache_config* config) {
  require_pointer(config, "config", "an ekv_cache_config");
  *config = to_c(KVCacheConfig{});
}

inline KVCacheConfig parse_config(const char* text, const char* name) {
  require_pointer(text, name, "a NUL-terminated config text");
  return parse_kv_cache_config(text);
}

inline void config_parse(const char* text, ekv_cache_config* config) {
  require_pointer(config, "config", "an ekv_cache_config");
  *config = to_c(parse_config(text, "text"));
}

inline void config_to_string(const ekv_cache_config* config, char* text, std::size_t capacity) {
  require_pointer(text, "text", "capacity chars");
  const std::string s = to_string(from_c(config, "config"));
  if (capacity < s.size() + 1) {
    reject("capacity=" + std::to_string(capacity) + " not supported for this config; supported: >= " +
           std::to_string(s.size() + 1) + " (its text and the NUL)");
  }
  std::memcpy(text, s.c_str(), s.size() + 1);
}

}  // namespace ekv::capi
