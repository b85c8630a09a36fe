"""ekv's KV cache from Python, under the KTransformers wrapper's names: KVCacheConfig,
KVCache, AnchorType, GGMLType, RetrievalType. The cache is the C API's handle
(ekv_cache): on device="cpu" the CPU backend (numpy arrays), on "cuda" or "cuda:N" ekv's
GPU KVCache (device arrays: torch or CuPy tensors, read through __cuda_array_interface__
or DLPack). Every call is synchronous; failures raise ekv's exceptions with
ekv_last_error()'s message."""
import ctypes
import enum
import os
from collections import namedtuple

import numpy as np

from ._errors import check
from ._library import CONFIG_FIELDS, CConfig, CDeviceInfo, CMemory, lib
from ._tensor import CPU, CUDA, Tensor, as_tensor


class AnchorType(enum.IntEnum):
    """ekv_anchor_type: how a block is summarised for scoring."""
    QUEST = 0
    BLOCK_MEAN = 1
    BLOCK_MAX = 2
    FIXED = 3
    DYNAMIC = 4


class GGMLType(enum.IntEnum):
    """ekv_dtype: how the cache stores K and V. FP8 (E4M3, a scale of 1 per kv head), Q8_0
    and Q4_0 (GGML's groups of 32 values with a float16 scale) are quantized on append:
    such a cache takes float16 appends, queries, outputs and anchors, and its block
    accessors move a block's stored bytes (a uint8 array of block_row_bytes())."""
    FP32 = 0
    FP16 = 1
    BF16 = 2
    FP8 = 3
    Q8_0 = 4
    Q4_0 = 5


_DENSE_TYPES = (GGMLType.FP32, GGMLType.FP16, GGMLType.BF16)
_STORAGE_NAMES = {GGMLType.FP8: "float8_e4m3", GGMLType.Q8_0: "q8_0", GGMLType.Q4_0: "q4_0"}


class RetrievalType(enum.IntEnum):
    """ekv_retrieval_type: who shares one selection."""
    LAYER = 0
    KVHEAD = 1
    QHEAD = 2


_ENUMS = {"anchor_type": AnchorType, "kv_type": GGMLType, "retrieval_type": RetrievalType}
KVCacheMemory = namedtuple("KVCacheMemory", "bytes_per_layer bytes_per_token total_bytes blocks_used blocks_free")


class KVCacheConfig:
    """ekv::KVCacheConfig: the fields of the older wrapper's config, in its order, as
    positional or keyword arguments; fields not given take ekv's defaults
    (ekv_cache_config_default). str() is the text form; parse() reads one."""

    def __init__(self, layer_num=None, kv_head_num=None, q_head_num=None, head_dim=None, block_len=None,
                 anchor_num=None, anchor_type=None, kv_type=None, retrieval_type=None, layer_step=None,
                 token_step=None, layer_offset=None, max_block_num=None, max_batch_size=None,
                 max_thread_num=None):
        c = CConfig()
        check(lib().ekv_cache_config_default(ctypes.byref(c)))
        given = locals()
        for name in CONFIG_FIELDS:
            value = given[name]
            setattr(self, name, getattr(c, name) if value is None else value)
        for name, kind in _ENUMS.items():
            setattr(self, name, kind(getattr(self, name)))

    @classmethod
    def parse(cls, text):
        """The text form, "layer_num=32 kv_head_num=8 anchor_type=QUEST kv_type=FP16 ..."."""
        c = CConfig()
        check(lib().ekv_cache_config_parse(text.encode(), ctypes.byref(c)))
        return cls._from_c(c)

    @classmethod
    def _from_c(cls, c):
        return cls(**{name: getattr(c, name) for name in CONFIG_FIELDS})

    def _to_c(self):
        return CConfig(*(int(getattr(self, name)) for name in CONFIG_FIELDS))

    def validate(self):
        """Raises InvalidArgumentError naming the first field a cache cannot take."""
        check(lib().ekv_cache_config_validate(ctypes.byref(self._to_c())))

    def __str__(self):
        text = ctypes.create_string_buffer(1024)
        check(lib().ekv_cache_config_to_string(ctypes.byref(self._to_c()), text, len(text)))
        return text.value.decode()

    def __repr__(self):
        return f"KVCacheConfig.parse({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, KVCacheConfig) and all(
            int(getattr(self, n)) == int(getattr(other, n)) for n in CONFIG_FIELDS)


def _stream_handle(stream):
    """A cudaStream_t from a torch.cuda.Stream (cuda_stream), a CuPy stream (ptr) or an int."""
    for attribute in ("cuda_stream", "ptr"):
        if hasattr(stream, attribute):
            stream = getattr(stream, attribute)
            break
    if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
        raise TypeError(f"stream is {stream!r}; supported: a torch.cuda.Stream, a CuPy stream, or a cudaStream_t "
                        "as a non-negative int (0: the legacy default stream)")
    return ctypes.c_void_p(stream)


def _device(device):
    """"cpu", "cuda", "cuda:N" or "auto" as (ekv_device_type, device id); "auto" is the
    current GPU where CUDA sees one, else the CPU backend (ekv-bench's --device auto)."""
    if device == "auto":
        current = CDeviceInfo()
        status = lib().ekv_get_device_info(ctypes.byref(current), 0)
        if status == 2:  # EKV_ERROR_NO_DEVICE
            return CPU, 0
        check(status)
        return CUDA, current.device
    if device == "cpu":
        return CPU, 0
    if device == "cuda":
        return CUDA, 0
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return CUDA, int(device[5:])
    raise ValueError(f"device={device!r} not supported; supported: 'cpu', 'cuda', 'cuda:N', 'auto'")


class KVCache:
    """A multi-layer paged KV cache (ekv_cache). KVCache(config, device="cpu") (or "cuda",
    "cuda:N", "auto": the GPU where one is visible, else the CPU); close() or a with block
    frees it (as does garbage collection). On the GPU, each call first waits
    for work queued on the legacy default stream (torch's and CuPy's default); synchronize
    arrays written on other streams first.

    Shapes (kv_type elements unless said): append's k_new, v_new [batch][new_tokens]
    [kv_head_num][head_dim]; attn's q_in, output [batch][q_head_num][head_dim] and attn_lse
    float32 [batch][q_head_num] (the older [batch][1][...] shapes are taken too); a block's
    k, v [kv_head_num][block_len][head_dim], importance float32 [kv_head_num][block_len],
    anchor [kv_head_num][anchor_values]."""

    def __init__(self, config, device="cpu"):
        if not isinstance(config, KVCacheConfig):
            raise TypeError(f"config is a {type(config).__name__}; supported: an ekv.KVCacheConfig")
        device_type, device_id = _device(device)
        handle = ctypes.c_void_p()
        check(lib().ekv_cache_create(ctypes.byref(config._to_c()), device_type, device_id, ctypes.byref(handle)))
        self._handle, self._device_id = handle, device_id
        self.device = "cpu" if device_type == CPU else f"cuda:{device_id}"
        self.config = config.__class__._from_c(config._to_c())  # a copy: the cache's, fixed
        self.last_attn_exact = False

    def close(self):
        """Frees the cache; later calls raise ValueError."""
        if getattr(self, "_handle", None):
            lib().ekv_cache_destroy(self._handle)
            self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the module's globals may be gone; the process frees it
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _h(self):
        if not self._handle:
            raise ValueError("this KVCache is closed")
        return self._handle

    def _tensor(self, obj, name, writable=False, squeeze=False):
        t = as_tensor(obj, name, writable)
        return (t.squeeze_token_axis() if squeeze else t).descriptor(name, self._device_id)

    def append(self, layer_idx, k_new, v_new, stream=None):
        """Appends new_tokens tokens to each of the first batch sequences of a layer. With
        `stream` (see attn) it is ordered on that stream instead of synchronous; it cannot be
        captured into a CUDA graph (it takes blocks on the host)."""
        k, v = self._tensor(k_new, "k_new"), self._tensor(v_new, "v_new")
        if stream is None:
            check(lib().ekv_cache_append(self._h(), layer_idx, k, v))
        else:
            check(lib().ekv_cache_append_on_stream(self._h(), layer_idx, k, v, _stream_handle(stream)))

    def attn(self, q_in, output, attn_lse, layer_idx, generate_token_idx, block_table=None, cache_seqlens=None,
             pick_block_num=None, init_block_num=None, local_block_num=None, stream=None):
        """One layer's attention of the first batch = q_in.shape[0] sequences: exact without
        pick_block_num, else elastic (init_block_num sinks, default 1; local_block_num
        window blocks, default 1; pick_block_num by score). block_table and cache_seqlens,
        where given, must be the cache's (block_table(), get_cache_total_len()). Returns
        True (the older wrapper's callers test it); failures raise.

        Without `stream` the call is synchronous (after the legacy default stream's work).
        With one (a torch.cuda.Stream, a CuPy stream, or a cudaStream_t as an int; 0 the
        legacy default stream) it is queued on that stream and returns without waiting, and
        it may be captured into a CUDA graph once a call of the same batch, length (to the
        next power of two) and budget has run outside capture (c_api.h,
        ekv_cache_attn_on_stream). A CPU cache takes stream=0 only."""
        q = self._tensor(q_in, "q", squeeze=True)
        batch = q.shape[0] if q.ndim >= 1 else 0
        if cache_seqlens is not None:
            self._check_seqlens(np.asarray(cache_seqlens), batch)
        if block_table is not None:
            self._check_rows("attn", np.asarray(block_table), batch)
        exact = ctypes.c_int(0)
        args = (self._h(), q, self._tensor(output, "output", True, True),
                self._tensor(attn_lse, "attn_lse", True, True), layer_idx, generate_token_idx,
                -1 if pick_block_num is None else pick_block_num, 1 if init_block_num is None else init_block_num,
                1 if local_block_num is None else local_block_num, ctypes.byref(exact))
        if stream is None:
            check(lib().ekv_cache_attn(*args))
        else:
            check(lib().ekv_cache_attn_on_stream(*args, _stream_handle(stream)))
        self.last_attn_exact = bool(exact.value)
        return True

    def get_cache_total_len(self, seq=0):
        n = ctypes.c_int(0)
        check(lib().ekv_cache_get_cache_total_len(self._h(), seq, ctypes.byref(n)))
        return n.value

    def update_cache_total_len(self, cache_total_len, seq=0):
        check(lib().ekv_cache_update_cache_total_len(self._h(), cache_total_len, seq))

    def free_sequence(self, seq):
        check(lib().ekv_cache_free_sequence(self._h(), seq))

    def block_table(self):
        """int32 [max_batch_size][max_seq_block_num]: each sequence's pool blocks, -1 where none."""
        width = ctypes.c_int(0)
        check(lib().ekv_cache_get_block_table(self._h(), None, 0, ctypes.byref(width)))
        table = np.empty((self.config.max_batch_size, width.value), dtype=np.int32)
        check(lib().ekv_cache_get_block_table(self._h(), table.ctypes.data, table.size, ctypes.byref(width)))
        return table

    def memory(self):
        m = CMemory()
        check(lib().ekv_cache_get_memory(self._h(), ctypes.byref(m)))
        return KVCacheMemory(m.bytes_per_layer, m.bytes_per_token, m.total_bytes, m.blocks_used, m.blocks_free)

    def block_row_bytes(self):
        """Bytes of one block's K (or V) as stored: kv_head_num x block_len rows of codes,
        then (Q8_0, Q4_0) their float16 scales (include/ekv/core/quant.hpp's bits); from the
        cache's memory report, whose bytes per token are K's and V's rows of every layer."""
        c = self.config
        return self.memory().bytes_per_token // (2 * c.layer_num) * c.block_len

    def _block_tensor(self, obj, name, writable=False):
        """A block's K or V: an array of kv_type [kv_head_num, block_len, head_dim], or for
        a quantized kv_type the block's stored bytes, a contiguous uint8 array of
        block_row_bytes() bytes (any shape)."""
        kv_type = GGMLType(self.config.kv_type)
        if kv_type in _DENSE_TYPES:
            return self._tensor(obj, name, writable)
        t = as_tensor(obj, name, writable)
        if t.dtype != "uint8":
            raise TypeError(f"{name} has dtype {t.dtype}; a {kv_type.name} cache's blocks are uint8 arrays of "
                            f"block_row_bytes()={self.block_row_bytes()} bytes")
        if t.size != self.block_row_bytes() or not t.is_contiguous():
            raise ValueError(f"{name} has shape {t.shape}; a {kv_type.name} cache's blocks are contiguous uint8 "
                             f"arrays of block_row_bytes()={self.block_row_bytes()} bytes")
        c = self.config
        shape = (c.kv_head_num, c.block_len, c.head_dim)
        rows = (c.block_len * c.head_dim, c.head_dim, 1)
        return Tensor(t.data, _STORAGE_NAMES[kv_type], shape, rows, t.device_type, t.device_id, t.keep).descriptor(
            name, self._device_id)

    def get_kvcache_one_block(self, k_in, v_in, layer_id, block_idx):
        check(lib().ekv_cache_get_kvcache_one_block(self._h(), self._block_tensor(k_in, "k", True),
                                                    self._block_tensor(v_in, "v", True), layer_id, block_idx))

    def update_kvcache_one_block(self, k_in, v_in, layer_id, block_idx):
        check(lib().ekv_cache_update_kvcache_one_block(self._h(), self._block_tensor(k_in, "k"),
                                                       self._block_tensor(v_in, "v"),
                                                       layer_id, block_idx))

    def get_kvcache_one_block_fp16(self, k_in, v_in, layer_id, block_idx):
        self._fp16("get_kvcache_one_block_fp16")
        self.get_kvcache_one_block(k_in, v_in, layer_id, block_idx)

    def update_kvcache_one_block_fp16(self, k_in, v_in, layer_id, block_idx):
        self._fp16("update_kvcache_one_block_fp16")
        self.update_kvcache_one_block(k_in, v_in, layer_id, block_idx)

    def get_importance_one_block(self, importance, layer_id, block_idx):
        check(lib().ekv_cache_get_importance_one_block(self._h(), self._tensor(importance, "importance", True),
                                                       layer_id, block_idx))

    def update_importance_one_block(self, importance, layer_id, block_idx):
        check(lib().ekv_cache_update_importance_one_block(self._h(), self._tensor(importance, "importance"),
                                                          layer_id, block_idx))

    def get_anchor_one_block(self, anchor, layer_id, block_idx):
        check(lib().ekv_cache_get_anchor_one_block(self._h(), self._tensor(anchor, "anchor", True), layer_id,
                                                   block_idx))

    def update_anchor_one_block(self, anchor, layer_id, block_idx):
        check(lib().ekv_cache_update_anchor_one_block(self._h(), self._tensor(anchor, "anchor"), layer_id,
                                                      block_idx))

    def dump_kvcache(self, *args):
        """dump_kvcache(tensor_file_path), or the older dump_kvcache(block_table,
        cache_total_len, tensor_file_path), whose table and length must be sequence 0's.
        The file holds the whole cache (safetensors; numpy and torch read it)."""
        if len(args) == 3:
            block_table, cache_total_len, path = args
            if cache_total_len != self.get_cache_total_len(0):
                raise ValueError(f"dump_kvcache: cache_total_len={cache_total_len}, but sequence 0 holds "
                                 f"{self.get_cache_total_len(0)} tokens")
            self._check_rows("dump_kvcache", np.asarray(block_table), 1)
        elif len(args) == 1:
            (path,) = args
        else:
            raise TypeError("dump_kvcache takes (tensor_file_path) or (block_table, cache_total_len, "
                            f"tensor_file_path), not {len(args)} arguments")
        check(lib().ekv_cache_dump_kvcache(self._h(), os.fsencode(path)))

    def load_kvcache(self, tensor_file_path):
        """Reads a dump of either backend; checked whole first, the cache unchanged on failure."""
        check(lib().ekv_cache_load_kvcache(self._h(), os.fsencode(tensor_file_path)))

    def _fp16(self, call):
        if self.config.kv_type != GGMLType.FP16:
            raise TypeError(f"{call}: the cache's kv_type is {self.config.kv_type.name}; the _fp16 accessors need "
                            "FP16 (get/update_kvcache_one_block take any kv_type)")

    def _check_seqlens(self, seqlens, batch):
        if seqlens.size != batch:
            raise ValueError(f"attn: cache_seqlens holds {seqlens.size} lengths for a batch of {batch}")
        for b, n in enumerate(seqlens.reshape(-1).tolist()):
            if n != self.get_cache_total_len(b):
                raise ValueError(f"attn: cache_seqlens[{b}]={n}, but sequence {b} holds "
                                 f"{self.get_cache_total_len(b)} tokens")

    def _check_rows(self, call, table, rows):
        """Each of the first `rows` rows of table must hold the cache's blocks of that sequence."""
        table = table.reshape(rows, -1)
        ours = self.block_table()
        for s in range(rows):
            held = -(-self.get_cache_total_len(s) // self.config.block_len)
            if table.shape[1] < held:
                raise ValueError(f"{call}: block_table rows hold {table.shape[1]} blocks; sequence {s} has {held}")
            for b in range(held):
                if table[s, b] != ours[s, b]:
                    raise ValueError(f"{call}: block_table[{s}][{b}]={table[s, b]}, but the cache holds that block in "
                                     f"pool block {ours[s, b]} (pass the rows of block_table())")
