// The C API's tensor descriptors (ekv_tensor, c_api/tensor.hpp) on any fields, through the
// host path of the cache calls (c_api/cache.cuh's ekv_cache on EKV_DEVICE_CPU: tensor_view,
// then HostKVCache, whose kv_cache_args.hpp checks the views), each call under guarded()
// as the C functions run it. A call answers EKV_SUCCESS or EKV_ERROR_INVALID_ARGUMENT,
// never EKV_ERROR_INTERNAL (something other than ekv::Error escaped), and a descriptor the
// checks accept is never read or written past the bytes its shape and dtype describe (the
// data is a heap block of exactly that size, which AddressSanitizer watches).
//
// The input, read front to back (fuzz_input.hpp's Reader; make_seeds.cpp writes seeds so):
//   byte kv_type (one of kKVCacheTypes), byte anchor_type (one of kAnchorKinds): the cache,
//   tensor_fuzz_config(); then calls, each: byte Call, its ints, its tensors. A tensor is
//   byte flags (kNull...), [byte fill seed], int8 dtype, int8 device_type, int8 ndim,
//   min(ndim, 4) dims and, with kStrides, as many strides (Reader::dim).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ekv/c_api.h"
#include "ekv/c_api/status.hpp"
#include "ekv/c_api/tensor.hpp"
#include "ekv/cache/kv_cache_config.hpp"
#include "ekv/cache/tensor_view.hpp"
#include "ekv/core/quant.hpp"
#include "ekv/cpu/host_kv_cache.hpp"
#include "fuzz/fuzz_input.hpp"
#include "fuzz/tensor_calls.hpp"

namespace {

using ekv::fuzz::Call;
using ekv::fuzz::Reader;
namespace flag = ekv::fuzz::tensor_flag;

// Calls per input, and the most bytes a descriptor's data gets (more: one byte, so that a
// check that lets it through is caught reading past it).
constexpr int kMostCalls = 16;
constexpr std::size_t kMostDataBytes = std::size_t{1} << 20;

// Bytes that `shape` of `dtype` describes, or 0 where they cannot be counted: block dtypes
// as rows of kv_row_bytes, where the last dimension is whole groups, else one per value.
std::size_t described_bytes(int dtype, const std::vector<std::int64_t>& shape) {
  unsigned __int128 values = 1;
  for (std::int64_t d : shape) {
    if (d < 0) return 0;
    values *= static_cast<std::uint64_t>(d);
    if (values > kMostDataBytes) return 0;
  }
  const std::int64_t last = shape.empty() ? 0 : shape.back();
  std::size_t bytes = static_cast<std::size_t>(values);
  switch (dtype) {
    case EKV_DTYPE_FLOAT32: bytes *= 4; break;
    case EKV_DTYPE_FLOAT16:
    case EKV_DTYPE_BFLOAT16: bytes *= 2; break;
    case EKV_DTYPE_Q8_0:
    case EKV_DTYPE_Q4_0:
      if (last > 0 && last % ekv::kQuantGroup == 0) {
        const ekv::KVStorage s = dtype == EKV_DTYPE_Q8_0 ? ekv::KVStorage::kQ8_0 : ekv::KVStorage::kQ4_0;
        bytes = bytes / static_cast<std::size_t>(last) * ekv::kv_row_bytes(s, static_cast<int>(last));
      }
      break;
    default: break;  // FLOAT8_E4M3, and values the checks reject: one byte each
  }
  return bytes <= kMostDataBytes ? bytes : 0;
}

// One argument: the descriptor and what it points to, kept until the call returns. The
// shape and strides are heap arrays of exactly ndim entries, so that a read past them shows.
struct Tensor {
  ekv_tensor t{};
  bool null = false;
  std::unique_ptr<std::int64_t[]> shape, strides;
  std::unique_ptr<unsigned char[]> data;

  const ekv_tensor* get() const { return null ? nullptr : &t; }
};

std::unique_ptr<Tensor> read_tensor(Reader& in) {
  auto x = std::make_unique<Tensor>();
  const std::uint8_t flags = in.byte();
  std::uint64_t random = (flags & flag::kRandomFill) != 0 ? 0x9E3779B97F4A7C15ull * (in.byte() + 1u) : 0;
  x->null = (flags & flag::kNullDescriptor) != 0;
  x->t.dtype = in.small();
  x->t.device_type = in.small();
  x->t.ndim = in.small();
  const int dims = std::max(1, std::min<int>(x->t.ndim, ekv::TensorView::kMaxDims));
  std::vector<std::int64_t> shape;
  x->shape.reset(new std::int64_t[dims]());
  for (int d = 0; d < dims && d < x->t.ndim; ++d) shape.push_back(x->shape[d] = in.dim());
  if ((flags & flag::kStrides) != 0) {
    x->strides.reset(new std::int64_t[dims]());
    for (int d = 0; d < dims && d < x->t.ndim; ++d) x->strides[d] = in.dim();
  }
  x->t.shape = (flags & flag::kNullShape) != 0 ? nullptr : x->shape.get();
  x->t.strides = x->strides.get();
  std::size_t bytes = described_bytes(x->t.dtype, shape);
  if (bytes == 0) bytes = 1;
  x->data.reset(new unsigned char[bytes]());
  for (std::size_t i = 0; random != 0 && i < bytes; ++i) {  // xorshift64
    random ^= random << 13, random ^= random >> 7, random ^= random << 17;
    x->data[i] = static_cast<unsigned char>(random);
  }
  x->t.data = (flags & flag::kNullData) != 0 ? nullptr : x->data.get();
  return x;
}

// A C call's status: what it threw, as guarded() answers; INTERNAL is a bug.
template <typename Body>
void call(const char* function, Body&& body) {
  const ekv_status status = ekv::capi::guarded(function, std::forward<Body>(body));
  if (status != EKV_SUCCESS && status != EKV_ERROR_INVALID_ARGUMENT) std::abort();
}

ekv::TensorView view(const Tensor& x, const char* name) { return ekv::capi::tensor_view(x.get(), name); }

void run_call(ekv::HostKVCache& cache, Reader& in) {
  const auto which = static_cast<Call>(in.pick(static_cast<int>(Call::kCount)));
  switch (which) {
    case Call::kAppend: {
      const int layer = in.small();
      const auto k = read_tensor(in), v = read_tensor(in);
      call("ekv_cache_append", [&] { cache.append(layer, view(*k, "k_new"), view(*v, "v_new")); });
      return;
    }
    case Call::kAttn: {
      const int layer = in.small(), token = in.byte(), pick = in.small(), init = in.small(), local = in.small();
      const auto q = read_tensor(in), o = read_tensor(in), lse = read_tensor(in);
      call("ekv_cache_attn", [&] {
        const ekv::TensorView qv = view(*q, "q"), ov = view(*o, "output"), lv = view(*lse, "attn_lse");
        cache.attn(qv, ov, lv, layer, token, pick, init, local);
      });
      return;
    }
    case Call::kGetKV:
    case Call::kUpdateKV: {
      const int layer = in.small(), block = in.small();
      const auto k = read_tensor(in), v = read_tensor(in);
      call("ekv_cache_kv_block", [&] {
        const ekv::TensorView kv = view(*k, "k"), vv = view(*v, "v");
        which == Call::kUpdateKV ? cache.update_kvcache_one_block(kv, vv, layer, block)
                                 : cache.get_kvcache_one_block(kv, vv, layer, block);
      });
      return;
    }
    case Call::kGetImportance:
    case Call::kUpdateImportance: {
      const int layer = in.small(), block = in.small();
      const auto t = read_tensor(in);
      call("ekv_cache_importance_block", [&] {
        const ekv::TensorView tv = view(*t, "importance");
        which == Call::kUpdateImportance ? cache.update_importance_one_block(tv, layer, block)
                                         : cache.get_importance_one_block(tv, layer, block);
      });
      return;
    }
    case Call::kGetAnchor:
    case Call::kUpdateAnchor: {
      const int layer = in.small(), block = in.small();
      const auto t = read_tensor(in);
      call("ekv_cache_anchor_block", [&] {
        const ekv::TensorView tv = view(*t, "anchor");
        which == Call::kUpdateAnchor ? cache.update_anchor_one_block(tv, layer, block)
                                     : cache.get_anchor_one_block(tv, layer, block);
      });
      return;
    }
    case Call::kUpdateTotalLen: {
      const int len = static_cast<std::int16_t>(in.byte() | (in.byte() << 8)), seq = in.small();
      call("ekv_cache_update_cache_total_len", [&] { cache.update_cache_total_len(len, seq); });
      return;
    }
    case Call::kFreeSequence: {
      const int seq = in.small();
      call("ekv_cache_free_sequence", [&] { cache.free_sequence(seq); });
      return;
    }
    case Call::kGetTotalLen:
    case Call::kCount: {
      const int seq = in.small();
      call("ekv_cache_get_cache_total_len", [&] { (void)cache.get_cache_total_len(seq); });
      return;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  const ekv::DType kv_type = ekv::kKVCacheTypes[in.pick(static_cast<int>(std::size(ekv::kKVCacheTypes)))];
  const ekv::AnchorKind anchor = ekv::kAnchorKinds[in.pick(static_cast<int>(std::size(ekv::kAnchorKinds)))];
  ekv::HostKVCache cache(ekv::fuzz::tensor_fuzz_config(kv_type, anchor));
  for (int i = 0; i < kMostCalls && !in.empty(); ++i) run_call(cache, in);
  const ekv::BlockAllocator& a = cache.allocator();
  if (a.used_blocks() + a.free_blocks() != a.num_blocks()) std::abort();
  return 0;
}
