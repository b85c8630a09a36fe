#pragma once
// The c_api_tensor target's input layout, which its seed writer (make_seeds.cpp) shares:
// the calls it makes and the flags of a tensor argument. The layout itself is described
// in c_api_tensor_fuzzer.cpp.

#include <cstdint>

namespace ekv::fuzz {

// A cache call and, after the byte, the arguments it reads (int8 unless said).
enum class Call : std::uint8_t {
  kAppend,            // layer, k_new, v_new
  kAttn,              // layer, generate_token_idx (byte), pick, init, local block counts, q, output, attn_lse
  kGetKV,             // layer, block, k, v
  kUpdateKV,          // layer, block, k, v
  kGetImportance,     // layer, block, importance
  kUpdateImportance,  // layer, block, importance
  kGetAnchor,         // layer, block, anchor
  kUpdateAnchor,      // layer, block, anchor
  kUpdateTotalLen,    // cache_total_len (int16, little-endian), seq
  kFreeSequence,      // seq
  kGetTotalLen,       // seq
  kCount
};

namespace tensor_flag {
inline constexpr std::uint8_t kNullDescriptor = 1;  // the ekv_tensor* is NULL
inline constexpr std::uint8_t kNullData = 2;        // data is NULL
inline constexpr std::uint8_t kStrides = 4;         // strides follow the dims (else NULL: row-major)
inline constexpr std::uint8_t kNullShape = 8;       // shape is NULL
inline constexpr std::uint8_t kRandomFill = 16;     // a seed byte follows: the data's bytes are random (else 0)
}  // namespace tensor_flag

}  // namespace ekv::fuzz
