#pragma once
// ElasticConfig: what elastic attention summarizes, how it selects blocks and how often,
// with the names the older KVCache config used (anchor_num, init_block_num, ...).

#include <cctype>
#include <cstddef>
#include <string>
#include <utility>

#include "ekv/core/dispatch.hpp"
#include "ekv/core/error.hpp"
#include "ekv/core/host_device.hpp"

namespace ekv {

// How a block is summarized for scoring (the "anchor"); elastic/reference_anchors.hpp
// defines each one exactly.
enum class AnchorKind { kQuest, kBlockMean, kBlockMax, kFixed, kDynamic };
// Who shares one selection: a whole layer, the query heads of a kv head, or each query head.
enum class RetrievalType { kLayer, kKvHead, kQHead };

inline constexpr AnchorKind kAnchorKinds[] = {AnchorKind::kQuest, AnchorKind::kBlockMean, AnchorKind::kBlockMax,
                                              AnchorKind::kFixed, AnchorKind::kDynamic};
inline constexpr RetrievalType kRetrievalTypes[] = {RetrievalType::kLayer, RetrievalType::kKvHead,
                                                    RetrievalType::kQHead};

inline const char* to_string(AnchorKind kind) {
  switch (kind) {
    case AnchorKind::kQuest: return "quest";
    case AnchorKind::kBlockMean: return "block_mean";
    case AnchorKind::kBlockMax: return "block_max";
    case AnchorKind::kFixed: return "fixed";
    case AnchorKind::kDynamic: return "dynamic";
  }
  return "invalid";
}

inline const char* to_string(RetrievalType type) {
  switch (type) {
    case RetrievalType::kLayer: return "layer";
    case RetrievalType::kKvHead: return "kvhead";
    case RetrievalType::kQHead: return "qhead";
  }
  return "invalid";
}

namespace detail {

// Matches to_string() of a listed value in any case, so the older system's spellings
// (QUEST, BLOCK_MEAN, KVHEAD) parse too.
template <const auto& kValues>
auto parse_enum(const std::string& name, const char* what) {
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string supported;
  for (const auto value : kValues) {
    if (lower == to_string(value)) return value;
    supported += (supported.empty() ? "" : ", ") + std::string(to_string(value));
  }
  throw Error("unknown " + std::string(what) + " '" + name + "'; supported: " + supported);
}

}  // namespace detail

inline AnchorKind parse_anchor_kind(const std::string& name) {
  return detail::parse_enum<kAnchorKinds>(name, "anchor kind");
}

inline RetrievalType parse_retrieval_type(const std::string& name) {
  return detail::parse_enum<kRetrievalTypes>(name, "retrieval type");
}

// Values stored per block and kv head, in the cache's own dtype: QUEST keeps min then max
// of each channel, MEAN and MAX one key-sized vector, FIXED and DYNAMIC anchor_num keys.
EKV_HOST_DEVICE constexpr int anchor_values(AnchorKind kind, int anchor_num, int head_dim) {
  if (kind == AnchorKind::kQuest) return 2 * head_dim;
  if (kind == AnchorKind::kFixed || kind == AnchorKind::kDynamic) return anchor_num * head_dim;
  return head_dim;
}

// Selections per sequence: one per layer, per kv head or per query head.
EKV_HOST_DEVICE constexpr int num_granules(RetrievalType type, int q_heads, int kv_heads) {
  return type == RetrievalType::kLayer ? 1 : type == RetrievalType::kKvHead ? kv_heads : q_heads;
}

// The selection query head q_head attends with; group = q_heads / kv_heads.
EKV_HOST_DEVICE constexpr int granule_of(RetrievalType type, int q_head, int group) {
  return type == RetrievalType::kLayer ? 0 : type == RetrievalType::kKvHead ? q_head / group : q_head;
}

// The block counts are per decode step; ElasticPolicy (elastic/policy.hpp) can derive them
// from a budget instead. token_step and layer_step amortize scoring across steps and layers:
// see refreshes_selection() and selection_layer().
struct ElasticConfig {
  AnchorKind anchor = AnchorKind::kQuest;
  int anchor_num = 1;       // anchors per block for FIXED and DYNAMIC
  int init_block_num = 1;   // attention sinks: the first blocks, always read
  int local_block_num = 1;  // recent window: the last blocks, always read
  int pick_block_num = 0;   // blocks chosen by score
  RetrievalType retrieval = RetrievalType::kKvHead;
  int token_step = 1;
  int layer_step = 1;
  int layer_offset = 0;

  // Never throws: ok, or the first problem in a sentence naming the field and its value.
  Support validate() const {
    const auto fail = [](const std::string& why) { return Support{false, "ElasticConfig: " + why}; };
    if (!detail::contains(kAnchorKinds, anchor)) {
      return fail("invalid anchor kind value " + std::to_string(static_cast<int>(anchor)));
    }
    if (!detail::contains(kRetrievalTypes, retrieval)) {
      return fail("invalid retrieval type value " + std::to_string(static_cast<int>(retrieval)));
    }
    if (anchor_num < 1) return fail("anchor_num=" + std::to_string(anchor_num) + " must be at least 1");
    const std::pair<const char*, int> counts[] = {
        {"init_block_num", init_block_num}, {"local_block_num", local_block_num}, {"pick_block_num", pick_block_num}};
    for (const auto& [field, value] : counts) {
      if (value < 0) return fail(std::string(field) + "=" + std::to_string(value) + " must not be negative");
    }
    if (token_step < 1) return fail("token_step=" + std::to_string(token_step) + " must be at least 1");
    if (layer_step < 1) return fail("layer_step=" + std::to_string(layer_step) + " must be at least 1");
    if (layer_offset < 0 || layer_offset >= layer_step) {
      return fail("layer_offset=" + std::to_string(layer_offset) + " must be in [0, layer_step=" +
                  std::to_string(layer_step) + ")");
    }
    return {};
  }

  // Whether decode step `step` (0 at the first step of the sequence) scores and selects;
  // the steps in between reuse that selection plus the blocks appended since.
  EKV_HOST_DEVICE bool refreshes_selection(int step) const { return step % token_step == 0; }

  // The layer whose selection `layer` uses: layers from layer_offset on share one per
  // layer_step layers; layers before layer_offset have no earlier one and select for themselves.
  EKV_HOST_DEVICE int selection_layer(int layer) const {
    return layer < layer_offset ? layer : layer - (layer - layer_offset) % layer_step;
  }
};

}  // namespace ekv
