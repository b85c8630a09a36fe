"""The Python package ekv (examples/python/) on the CPU backend: configs under the older
wrapper's names, error paths carrying ekv_last_error(), KVCache end to end (append,
exact attention against a numpy float64 reference, elastic attention that finds a planted
block, dump and load with identical outputs, block accessors), the DLPack path, the six
functions' errors, `pip install` from the repository and the example script. On a GPU
machine with torch, the same cache on "cuda" and the six functions with torch CUDA
tensors (skipped otherwise). EKV_LIBRARY names libekv_c (ctest passes it). Tolerances, relative L2 per head against
float64: float32 1e-5, float16 2e-3 (tests/cache/kv_cache_checks.hpp's)."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"
sys.path.insert(0, str(PACKAGE))
import ekv  # noqa: E402

TOLERANCE = {np.float32: 1e-5, np.float16: 2e-3}
SEED = int(os.environ.get("EKV_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))


def small_config(kv_type=ekv.GGMLType.FP32, **fields):
    base = dict(layer_num=2, kv_head_num=2, q_head_num=8, head_dim=64, block_len=16, kv_type=kv_type,
                max_block_num=40, max_batch_size=2, max_thread_num=2)
    base.update(fields)
    return ekv.KVCacheConfig(**base)


def has_gpu():
    try:
        ekv.get_gpu_info()
        return True
    except ekv.NoDeviceError:
        return False


def reference(q, k, v, group):
    """float64 attention of q [q_heads][d] over k, v [tokens][kv_heads][d]: (o, lse)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    o, lse = np.empty_like(q), np.empty(q.shape[0])
    for h in range(q.shape[0]):
        s = k[:, h // group] @ q[h] / np.sqrt(q.shape[1])
        m = s.max()
        p = np.exp(s - m)
        o[h] = p @ v[:, h // group] / p.sum()
        lse[h] = m + np.log(p.sum())
    return o, lse


def relative_error(got, want):
    """The worst head's relative L2 error."""
    got = np.asarray(got, dtype=np.float64)
    return max(np.linalg.norm(g - w) / np.linalg.norm(w) for g, w in zip(got, want))


class Tokens:
    """A cache's tokens kept apart, per layer and sequence: what the reference reads."""

    def __init__(self, config):
        self.k = [[[] for _ in range(config.max_batch_size)] for _ in range(config.layer_num)]
        self.v = [[[] for _ in range(config.max_batch_size)] for _ in range(config.layer_num)]

    def append(self, cache, layer, k, v):
        cache.append(layer, k, v)
        for b in range(k.shape[0]):
            self.k[layer][b].extend(k[b])
            self.v[layer][b].extend(v[b])

    def of(self, layer, b, tokens=None):
        k, v = np.array(self.k[layer][b]), np.array(self.v[layer][b])
        return (k, v) if tokens is None else (k[tokens], v[tokens])


def attend(cache, q, **counts):
    c = cache.config
    dtype = q.dtype
    o = np.full((q.shape[0], c.q_head_num, c.head_dim), np.nan, dtype=dtype)
    lse = np.full((q.shape[0], c.q_head_num), np.nan, dtype=np.float32)
    assert cache.attn(q, o, lse, counts.pop("layer", 0), counts.pop("step", 0), **counts) is True
    return o, lse


def test_a_cpu_cache_takes_stream_0_only():
    cache = ekv.KVCache(small_config())
    k = np.random.default_rng(SEED).uniform(-1, 1, (1, 5, 2, 64)).astype(np.float32)
    cache.append(0, k, k, stream=0)  # the CPU backend has no streams: 0 runs as without one
    assert cache.get_cache_total_len() == 5

    class TorchLikeStream:
        cuda_stream = 1234

    with pytest.raises(ekv.InvalidArgumentError) as e:
        cache.append(0, k, k, stream=TorchLikeStream())
    assert str(e.value) == ("ekv_cache_append_on_stream: stream is not NULL; supported: NULL for a CPU cache "
                            "(EKV_DEVICE_CPU: no streams)")
    assert cache.get_cache_total_len() == 5  # nothing appended
    q = np.zeros((1, 8, 64), np.float32)
    o, lse = np.zeros_like(q), np.zeros((1, 8), np.float32)
    for bad in ("0", -1, 1.5, True):
        with pytest.raises(TypeError, match="stream is .*; supported: a torch.cuda.Stream, a CuPy stream"):
            cache.attn(q, o, lse, 0, 0, stream=bad)
    assert cache.attn(q, o, lse, 0, 0, stream=0)


def test_config_has_the_wrapper_names_defaults_and_text_form():
    c = ekv.KVCacheConfig()
    assert (c.layer_num, c.kv_head_num, c.q_head_num, c.head_dim, c.block_len) == (1, 8, 32, 128, 64)
    assert c.anchor_type is ekv.AnchorType.QUEST and c.kv_type is ekv.GGMLType.FP16
    assert c.retrieval_type is ekv.RetrievalType.KVHEAD
    # the older wrapper's positional order
    c = ekv.KVCacheConfig(32, 8, 32, 128, 256, 4, ekv.AnchorType.FIXED, ekv.GGMLType.FP16, ekv.RetrievalType.LAYER,
                          1, 1, 0, 512, 4, 32)
    assert str(c) == ("layer_num=32 kv_head_num=8 q_head_num=32 head_dim=128 block_len=256 anchor_num=4 "
                      "anchor_type=fixed kv_type=float16 retrieval_type=layer layer_step=1 token_step=1 "
                      "layer_offset=0 max_block_num=512 max_batch_size=4 max_thread_num=32")
    c.validate()
    assert ekv.KVCacheConfig.parse(str(c)) == c
    assert ekv.KVCacheConfig.parse("anchor_type=BLOCK_MAX kv_type=BF16 retrieval_type=QHEAD").anchor_type \
        is ekv.AnchorType.BLOCK_MAX
    with pytest.raises(ekv.InvalidArgumentError) as e:
        ekv.KVCacheConfig(head_dim=96).validate()
    assert str(e.value) == ("ekv_cache_config_validate: KVCacheConfig: head_dim=96 not supported by KVCache; "
                            "supported: [64, 128, 256]")
    assert e.value.status == 1 and e.value.status_name == "EKV_ERROR_INVALID_ARGUMENT"
    with pytest.raises(ekv.InvalidArgumentError, match="unknown field 'heads'"):
        ekv.KVCacheConfig.parse("heads=4")
    with pytest.raises(ValueError):  # an enum field takes only its values
        ekv.KVCacheConfig(anchor_type=9)


def test_errors_name_the_argument_and_carry_the_c_message():
    cache = ekv.KVCache(small_config())
    q = np.zeros((1, 8, 64), np.float32)
    o, lse = np.zeros_like(q), np.zeros((1, 8), np.float32)
    with pytest.raises(ekv.InvalidArgumentError) as e:
        cache.attn(q, o, lse, 0, 0)
    assert str(e.value) == ("ekv_cache_attn: HostKVCache::attn: sequence 0 of layer 0 holds no tokens; append "
                            "before attending")
    assert ekv.last_error() == str(e.value)
    k = np.zeros((1, 3, 2, 64), np.float32)
    with pytest.raises(ekv.InvalidArgumentError, match="k_new has dtype float16; needs float32"):
        cache.append(0, k.astype(np.float16), k)
    with pytest.raises(ekv.InvalidArgumentError, match=r"v_new has shape \[1, 3, 2, 32\]; needs \[1, 3, 2, 64\]"):
        cache.append(0, k, k[..., :32].copy())
    with pytest.raises(ekv.InvalidArgumentError, match="k_new is strided; needs a contiguous"):
        cache.append(0, k.transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3), k)
    with pytest.raises(ekv.InvalidArgumentError, match="layer 2 not supported; supported: 0 to layer_num - 1 = 1"):
        cache.append(2, k, k)
    with pytest.raises(TypeError, match="k_new is a list"):
        cache.append(0, k.tolist(), k)
    with pytest.raises(TypeError, match="k_new has dtype float64; supported: float32, float16, bfloat16"):
        cache.append(0, k.astype(np.float64), k)
    readonly = np.zeros_like(o)
    readonly.flags.writeable = False
    cache.append(0, k, k)
    with pytest.raises(ValueError, match="output is a read-only array"):
        cache.attn(q, readonly, lse, 0, 0)

    class OnTheDevice:  # a CUDA array, to the CPU backend
        __cuda_array_interface__ = {"shape": (1, 3, 2, 64), "typestr": "<f4", "data": (4096, False), "version": 3}

    with pytest.raises(ekv.InvalidArgumentError, match="k_new is in cuda memory; this cache needs host"):
        cache.append(0, OnTheDevice(), k)
    with pytest.raises(ValueError, match="device='tpu' not supported"):
        ekv.KVCache(small_config(), device="tpu")
    with pytest.raises(ekv.InvalidArgumentError, match="q_head_num=7 not supported with kv_head_num=2"):
        ekv.KVCache(small_config(q_head_num=7))
    if not has_gpu():
        with pytest.raises(ekv.NoDeviceError, match="ekv_cache_create: no CUDA device"):
            ekv.KVCache(small_config(), device="cuda")
    assert ekv.KVCache(small_config(), device="auto").device == ("cuda:0" if has_gpu() else "cpu")
    cache.close()
    with pytest.raises(ValueError, match="closed"):
        cache.get_cache_total_len()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cache_end_to_end_against_numpy(dtype, tmp_path):
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    kv_type = ekv.GGMLType.FP32 if dtype == np.float32 else ekv.GGMLType.FP16
    config = small_config(kv_type)
    cache, tokens = ekv.KVCache(config), Tokens(config)
    group, d, block = config.q_head_num // config.kv_head_num, config.head_dim, config.block_len
    # prefill: both sequences 50 tokens, then sequence 0 20 more; in layer 0 the keys of
    # block 3 of sequence 0 (tokens 48 to 63) all point along its kv heads' queries: a needle
    q = rng.uniform(-1, 1, (2, config.q_head_num, d)).astype(dtype)
    needle = q[0].reshape(2, group, d).sum(axis=1)  # [kv_head_num][head_dim]
    for layer in range(config.layer_num):
        k = rng.uniform(-0.5, 0.5, (2, 50, 2, d)).astype(dtype)
        more = rng.uniform(-0.5, 0.5, (1, 20, 2, d)).astype(dtype)
        if layer == 0:
            k[0, 48:50], more[0, :14] = needle, needle
        tokens.append(cache, layer, k, rng.uniform(-1, 1, (2, 50, 2, d)).astype(dtype))
        tokens.append(cache, layer, more, rng.uniform(-1, 1, (1, 20, 2, d)).astype(dtype))
    # the block accessors: block 3 holds the needle; its values, rewritten, are what attention reads
    blocks = cache.block_table()
    kb, vb = np.empty((2, block, d), dtype), np.empty((2, block, d), dtype)
    cache.get_kvcache_one_block(kb, vb, 0, int(blocks[0, 3]))
    assert np.array_equal(kb, np.broadcast_to(needle[:, None], kb.shape))
    vb = rng.uniform(-1, 1, vb.shape).astype(dtype)
    cache.update_kvcache_one_block(kb, vb, 0, int(blocks[0, 3]))
    v0 = np.array(tokens.v[0][0])
    v0[48:64] = vb.transpose(1, 0, 2)  # [block_len][kv_head_num][head_dim], as tokens are kept
    tokens.v[0][0] = list(v0)
    assert [cache.get_cache_total_len(b) for b in range(2)] == [70, 50]
    memory = cache.memory()
    assert memory.blocks_used == 5 + 4 and memory.blocks_free == 40 - 9
    assert memory.bytes_per_token == 2 * config.layer_num * 2 * d * np.dtype(dtype).itemsize

    for step in range(3):  # decode: each layer appends a token per sequence, then attends
        for layer in range(config.layer_num):
            k = rng.uniform(-0.5, 0.5, (2, 1, 2, d)).astype(dtype)
            tokens.append(cache, layer, k, rng.uniform(-1, 1, (2, 1, 2, d)).astype(dtype))
            o, lse = attend(cache, q, layer=layer, step=step)
            assert cache.last_attn_exact
            for b in range(2):
                want_o, want_lse = reference(q[b], *tokens.of(layer, b), group)
                assert relative_error(o[b], want_o) < TOLERANCE[dtype]
                np.testing.assert_allclose(lse[b], want_lse, atol=1e-2)
    # elastic, every block within budget: exact attention's result
    o, _ = attend(cache, q, pick_block_num=10)
    assert not cache.last_attn_exact
    for b in range(2):
        assert relative_error(o[b], reference(q[b], *tokens.of(0, b), group)[0]) < TOLERANCE[dtype]
    # elastic, 1 sink + 1 window + 1 picked block of sequence 0's 5: the needle is picked
    o, _ = attend(cache, q, pick_block_num=1, init_block_num=1, local_block_num=1, step=3)
    read = np.r_[0:block, 3 * block:4 * block, 4 * block:cache.get_cache_total_len(0)]
    assert relative_error(o[0], reference(q[0], *tokens.of(0, 0, read), group)[0]) < TOLERANCE[dtype]

    # dump, then load into a fresh cache: the same outputs, bit for bit
    path = tmp_path / "cache.safetensors"
    cache.dump_kvcache(cache.block_table()[:1], cache.get_cache_total_len(0), str(path))
    with pytest.raises(ValueError, match="cache_total_len=3, but sequence 0 holds 73 tokens"):
        cache.dump_kvcache(cache.block_table()[:1], 3, str(path))
    loaded = ekv.KVCache(config)
    loaded.load_kvcache(str(path))
    assert [loaded.get_cache_total_len(b) for b in range(2)] == [73, 53]
    assert np.array_equal(loaded.block_table(), cache.block_table())
    for counts in ({}, {"pick_block_num": 1}):
        for layer in range(config.layer_num):
            a, b = attend(cache, q, layer=layer, **counts), attend(loaded, q, layer=layer, **counts)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # the block accessors read what was written
    anchors = np.empty((2, 2 * d), dtype)  # QUEST: min, then max of each channel
    loaded.get_anchor_one_block(anchors, 1, int(blocks[1, 0]))
    k_first = np.array(tokens.k[1][1][:block], dtype=np.float64)
    np.testing.assert_array_equal(anchors[:, :d], k_first.min(axis=0).astype(dtype))
    np.testing.assert_array_equal(anchors[:, d:], k_first.max(axis=0).astype(dtype))
    importance = np.arange(2 * block, dtype=np.float32).reshape(2, block)
    loaded.update_importance_one_block(importance, 1, 0)
    back = np.zeros_like(importance)
    loaded.get_importance_one_block(back, 1, 0)
    assert np.array_equal(back, importance)
    if dtype == np.float16:
        loaded.get_kvcache_one_block_fp16(kb, vb, 0, int(blocks[0, 3]))
        assert np.array_equal(kb[:, 0], needle)
    else:
        with pytest.raises(TypeError, match="the _fp16 accessors need FP16"):
            loaded.get_kvcache_one_block_fp16(kb, vb, 0, 0)
    # a file of another config is refused and the cache left as it was
    other = ekv.KVCache(small_config(kv_type, max_block_num=41))
    with pytest.raises(ekv.InvalidArgumentError, match="ekv_cache_load_kvcache: .*config"):
        other.load_kvcache(str(path))
    assert other.get_cache_total_len(0) == 0
    loaded.free_sequence(0)
    assert loaded.get_cache_total_len(0) == 0 and loaded.memory().blocks_used == 4


def q8_0_values(stored, config):
    """A Q8_0 block's stored bytes as values [kv_head_num][block_len][head_dim]: int8 codes
    of every row, then every row's float16 scales (one per 32 values)."""
    h, n, d = config.kv_head_num, config.block_len, config.head_dim
    codes = stored[:h * n * d].view(np.int8).reshape(h, n, d // 32, 32).astype(np.float64)
    scales = stored[h * n * d:].view(np.float16).reshape(h, n, d // 32, 1).astype(np.float64)
    return (codes * scales).reshape(h, n, d)


def test_quantized_cache_stores_q8_0_and_attends_over_it(tmp_path):
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    config = small_config(ekv.GGMLType.Q8_0)
    cache, tokens = ekv.KVCache(config), Tokens(config)
    group, d, block = config.q_head_num // config.kv_head_num, config.head_dim, config.block_len
    for layer in range(config.layer_num):
        tokens.append(cache, layer, rng.uniform(-1, 1, (2, 40, 2, d)).astype(np.float16),
                      rng.uniform(-1, 1, (2, 40, 2, d)).astype(np.float16))
    memory = cache.memory()
    assert memory.bytes_per_token == 2 * config.layer_num * 2 * (d + d // 32 * 2)
    # a block's stored bytes: codes then scales, the tokens within Q8_0's rounding: half a
    # step, plus 127 codes' share of the float16 scale's rounding (2^-11 relative)
    assert cache.block_row_bytes() == 2 * block * (d + d // 32 * 2)
    kb, vb = (np.empty(cache.block_row_bytes(), np.uint8) for _ in range(2))
    pool_block = int(cache.block_table()[0, 1])
    cache.get_kvcache_one_block(kb, vb, 0, pool_block)
    want = np.array(tokens.k[0][0][block:2 * block], dtype=np.float64).transpose(1, 0, 2)  # [kv heads][block][d]
    scale = np.abs(want).reshape(2, block, d // 32, 32).max(axis=3, keepdims=True) / 127
    error = np.abs(q8_0_values(kb, config) - want).reshape(2, block, d // 32, 32)
    assert (error <= scale * (0.5 + 127 * 2.0**-11) + 1e-7).all()
    with pytest.raises(TypeError, match="Q8_0 cache's blocks are uint8 arrays of block_row_bytes"):
        cache.get_kvcache_one_block(np.empty((2, block, d), np.float16), vb, 0, pool_block)
    with pytest.raises(ValueError, match="block_row_bytes"):
        cache.get_kvcache_one_block(kb[:-1], vb, 0, pool_block)
    # attention reads the stored values: within Q8_0's cost of full precision, not equal to it
    q = rng.uniform(-1, 1, (2, config.q_head_num, d)).astype(np.float16)
    o, lse = attend(cache, q)
    errors = [relative_error(o[b], reference(q[b], *tokens.of(0, b), group)[0]) for b in range(2)]
    assert 1e-4 < max(errors) < 1e-2
    o_elastic, _ = attend(cache, q, pick_block_num=1)
    assert np.isfinite(o_elastic).all()
    # a block written back as read changes nothing; dump and load give the same outputs
    cache.update_kvcache_one_block(kb, vb, 0, pool_block)
    assert np.array_equal(attend(cache, q)[0], o)
    path = tmp_path / "q8_0.safetensors"
    cache.dump_kvcache(str(path))
    loaded = ekv.KVCache(config)
    loaded.load_kvcache(str(path))
    for counts in ({}, {"pick_block_num": 1}):
        assert np.array_equal(attend(loaded, q, **counts)[0], attend(cache, q, **counts)[0])
    assert "kv_type=q8_0" in str(config)
    with pytest.raises(ekv.InvalidArgumentError, match="q has dtype float32; needs float16"):
        attend(cache, q.astype(np.float32))


def test_attn_checks_the_older_tables_and_takes_the_older_shapes():
    config = small_config()
    cache = ekv.KVCache(config)
    k = np.random.default_rng(SEED).uniform(-1, 1, (1, 20, 2, 64)).astype(np.float32)
    cache.append(0, k, k)
    q = np.ones((1, 1, 8, 64), np.float32)  # the wrapper's [batch, 1, q_head_num, head_dim]
    o, lse = np.zeros_like(q), np.zeros((1, 1, 8), np.float32)
    cache.attn(q, o, lse, 0, 0, block_table=cache.block_table()[:1], cache_seqlens=np.array([20], np.int32))
    assert relative_error(o[0, 0], reference(q[0, 0], k[0], k[0], 4)[0]) < 1e-5
    with pytest.raises(ValueError, match=r"cache_seqlens\[0\]=19, but sequence 0 holds 20 tokens"):
        cache.attn(q, o, lse, 0, 0, cache_seqlens=[19])
    with pytest.raises(ValueError, match=r"block_table\[0\]\[1\]=7, but the cache holds that block in pool block 1"):
        cache.attn(q, o, lse, 0, 0, block_table=[[0, 7]])
    cache.update_cache_total_len(10)  # the newest 10 tokens dropped
    cache.attn(q, o, lse, 0, 0)
    assert relative_error(o[0, 0], reference(q[0, 0], k[0, :10], k[0, :10], 4)[0]) < 1e-5


class DLPackOnly:
    """An array seen only through DLPack (as a torch tensor would be), here a numpy one's."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__() if stream is None else self.a.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_dlpack_arrays_give_what_numpy_arrays_give():
    rng = np.random.default_rng(SEED)
    config = small_config(ekv.GGMLType.FP16)
    a, b = ekv.KVCache(config), ekv.KVCache(config)
    k = rng.uniform(-1, 1, (2, 33, 2, 64)).astype(np.float16)
    v = rng.uniform(-1, 1, (2, 33, 2, 64)).astype(np.float16)
    a.append(0, k, v)
    b.append(0, DLPackOnly(k), DLPackOnly(v))
    q = rng.uniform(-1, 1, (2, 8, 64)).astype(np.float16)
    want = attend(a, q)
    o, lse = np.full_like(want[0], np.nan), np.full_like(want[1], np.nan)
    b.attn(DLPackOnly(q), DLPackOnly(o), DLPackOnly(lse), 0, 0)
    assert np.array_equal(o, want[0]) and np.array_equal(lse, want[1])
    with pytest.raises(ekv.InvalidArgumentError, match=r"q has shape \[8, 64\]; needs \[batch, q_head_num"):
        b.attn(DLPackOnly(q[0]), DLPackOnly(o), DLPackOnly(lse), 0, 0)


def test_the_six_functions_check_arguments_and_need_a_gpu():
    data = np.ones(1024, np.float32)
    with pytest.raises(ekv.InvalidArgumentError, match="ekv_compress: seq_length=0 not supported; supported: >= 1"):
        ekv.compress(data, 0.5, seq_length=0)
    with pytest.raises(TypeError, match="kv_cache has dtype float64; needs float32"):
        ekv.compress(data.astype(np.float64), 0.5)
    with pytest.raises(ekv.InvalidArgumentError, match="ekv_inference_cycle_ex: hidden_size=96 not supported"):
        ekv.inference_cycle(np.ones(4 * 96, np.float32), 4, 96, 2, 4.0)
    if has_gpu():
        kept = ekv.compress(data * np.arange(1024, dtype=np.float32) / 1024, 0.5)
        assert kept.compressed_size == 511 and np.array_equal(kept.indices, np.arange(513, 1024))
        info = ekv.get_gpu_info()
        assert info.total_memory > 0 and info.device_name
        detail = ekv.get_device_info(measure_bandwidth=True)
        assert detail.name == info.device_name and detail.global_memory_bytes == info.total_memory
        assert detail.sm_count > 0 and detail.l2_cache_bytes > 0
        assert detail.copy_gbps > 0 and detail.host_to_device_gbps > 0
        assert ekv.mem_bandwidth(data, np.empty_like(data), iterations=2) > 0
        assert ekv.compute_throughput(np.empty_like(data)) > 0
        run = ekv.inference_cycle(np.ones(64 * 128, np.float32), 64, 128, 4, 2.0)
        assert run.baseline_total_ms > 0 and np.isfinite(run.output).all()
        return
    for call in (lambda: ekv.compress(data, 0.5), lambda: ekv.mem_bandwidth(data, np.empty_like(data)),
                 lambda: ekv.mem_bandwidth_batched(data, np.empty_like(data)),
                 lambda: ekv.compute_throughput(np.empty_like(data)), ekv.get_gpu_info, ekv.get_device_info,
                 lambda: ekv.inference_cycle(np.ones(4 * 64, np.float32), 4, 64, 2, 4.0)):
        with pytest.raises(ekv.NoDeviceError, match="no CUDA device"):
            call()


def test_pip_installs_the_package_from_the_repository(tmp_path):
    pytest.importorskip("setuptools")  # the build backend, offline (--no-build-isolation; .ci/python-env has both)
    pytest.importorskip("wheel")
    # from a copy of examples/python, so that the build leaves nothing in the checkout
    source, target = tmp_path / "python", tmp_path / "site"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    code = "import ekv; c = ekv.KVCache(ekv.KVCacheConfig(head_dim=64, max_block_num=4)); print(ekv.__file__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(target))


def test_readme_example_runs_as_written(tmp_path):
    text = (PACKAGE.parents[1] / "README.md").read_text()
    marker = "<!-- python: ekv -->\n```python\n"
    assert marker in text, "README.md lost its import ekv example"
    code = text.split(marker, 1)[1].split("\n```", 1)[0]
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE)})
    assert run.returncode == 0, run.stderr
    assert run.stdout == "1000 16 blocks\n"  # one block table for all layers: 16 blocks of 64
    assert (tmp_path / "cache.safetensors").exists()


def test_a_missing_library_is_reported_with_the_places_tried(tmp_path):
    # a copy of the package outside the checkout, so that no build/libekv_c.so is beside it
    shutil.copytree(PACKAGE / "ekv", tmp_path / "ekv", ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import ekv\ntry:\n    ekv.KVCacheConfig()\nexcept ekv.LibraryNotFoundError as e:\n    print(e)")
    env = {k: v for k, v in os.environ.items() if k not in ("EKV_LIBRARY", "EKV_C_LIBRARY")}
    env.update(EKV_LIBRARY="/nonexistent/libekv_c.so", PYTHONPATH=str(tmp_path), LD_LIBRARY_PATH="")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("libekv_c not found; set EKV_LIBRARY to its path"), run.stdout
    assert "/nonexistent/libekv_c.so (no such file)" in run.stdout
    assert str(tmp_path / "ekv" / "libekv_c.so") + " (no such file)" in run.stdout


def test_the_example_runs():
    run = subprocess.run([sys.executable, str(PACKAGE / "kv_cache_example.py")], capture_output=True, text=True,
                         env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    assert "elastic read 8 of 33 blocks" in run.stdout
    assert run.stdout.rstrip().endswith("loaded into a fresh cache: outputs identical")


@pytest.mark.skipif(not has_gpu(), reason="no GPU visible")
def test_gpu_cache_with_torch_cuda_tensors_matches_the_cpu_backend(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    config = small_config(ekv.GGMLType.FP16)
    gpu, cpu = ekv.KVCache(config, device="cuda"), ekv.KVCache(config)
    k = rng.uniform(-1, 1, (2, 70, 2, 64)).astype(np.float16)
    v = rng.uniform(-1, 1, (2, 70, 2, 64)).astype(np.float16)
    q = rng.uniform(-1, 1, (2, 8, 64)).astype(np.float16)
    for layer in range(2):
        cpu.append(layer, k, v)
        gpu.append(layer, torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda())
    want = attend(cpu, q)
    o = torch.full((2, 8, 64), float("nan"), dtype=torch.float16, device="cuda")
    lse = torch.full((2, 8), float("nan"), dtype=torch.float32, device="cuda")
    gpu.attn(torch.from_numpy(q).cuda(), o, lse, 0, 0)
    for b in range(2):
        assert relative_error(o.cpu().numpy()[b], reference(q[b], k[b], v[b], 4)[0]) < 2e-3
    np.testing.assert_allclose(lse.cpu().numpy(), want[1], atol=1e-2)
    o2 = torch.full_like(o, float("nan"))
    gpu.attn(DLPackOnly(torch.from_numpy(q).cuda()), DLPackOnly(o2), DLPackOnly(lse), 0, 0)  # through DLPack
    assert torch.equal(o2, o)
    path = tmp_path / "gpu.safetensors"
    gpu.dump_kvcache(str(path))
    cpu_loaded = ekv.KVCache(config)
    cpu_loaded.load_kvcache(str(path))  # a GPU file loads on the CPU backend
    assert np.array_equal(cpu_loaded.block_table(), gpu.block_table())
    with pytest.raises(ekv.InvalidArgumentError, match="q is in host memory; this cache needs cuda"):
        gpu.attn(q, o, lse, 0, 0)


@pytest.mark.skipif(not has_gpu(), reason="no GPU visible")
def test_quantized_gpu_cache_stores_the_cpu_backends_bytes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    for kv_type in (ekv.GGMLType.FP8, ekv.GGMLType.Q8_0, ekv.GGMLType.Q4_0):
        config = small_config(kv_type)
        gpu, cpu = ekv.KVCache(config, device="cuda"), ekv.KVCache(config)
        k = rng.uniform(-1, 1, (2, 70, 2, 64)).astype(np.float16)
        v = rng.uniform(-1, 1, (2, 70, 2, 64)).astype(np.float16)
        q = rng.uniform(-1, 1, (2, 8, 64)).astype(np.float16)
        cpu.append(0, k, v)
        gpu.append(0, torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda())
        for pool_block in np.unique(cpu.block_table()[:, :5]):
            a = [np.empty(cpu.block_row_bytes(), np.uint8) for _ in range(4)]
            cpu.get_kvcache_one_block(a[0], a[1], 0, int(pool_block))
            gpu.get_kvcache_one_block(a[2], a[3], 0, int(pool_block))
            assert np.array_equal(a[0], a[2]) and np.array_equal(a[1], a[3])
        want = attend(cpu, q)
        o = torch.full((2, 8, 64), float("nan"), dtype=torch.float16, device="cuda")
        lse = torch.full((2, 8), float("nan"), dtype=torch.float32, device="cuda")
        gpu.attn(torch.from_numpy(q).cuda(), o, lse, 0, 0)
        for b in range(2):
            assert relative_error(o.cpu().numpy()[b], np.asarray(want[0][b], np.float64)) < 2e-3
        np.testing.assert_allclose(lse.cpu().numpy(), want[1], atol=1e-2)


@pytest.mark.skipif(not has_gpu(), reason="no GPU visible")
def test_the_six_functions_on_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    data = rng.standard_normal(1 << 20).astype(np.float32)
    device_data = torch.from_numpy(data).cuda()
    values = torch.full((data.size,), float("nan"), device="cuda")
    indices = torch.full((data.size,), -1, dtype=torch.int32, device="cuda")
    kept = ekv.compress(device_data, 0.5, compressed_cache=values, indices=indices, repetitions=3)
    mask = np.abs(data) > np.float32(0.5)
    assert kept.compressed_size == mask.sum()
    assert np.array_equal(values[:kept.compressed_size].cpu().numpy().view(np.uint32), data[mask].view(np.uint32))
    assert np.array_equal(indices[:kept.compressed_size].cpu().numpy(), np.flatnonzero(mask))
    host_kept = ekv.compress(device_data, 0.5)  # device input, numpy outputs
    assert np.array_equal(host_kept.values, data[mask]) and kept.avg_ms > 0
    out = torch.empty_like(device_data)
    assert ekv.mem_bandwidth(device_data, out, iterations=3) > 0
    assert torch.equal(out, device_data)
    assert ekv.mem_bandwidth_batched(device_data, out, iters_per_launch=2, num_launches=2) > 0
    assert ekv.compute_throughput(torch.empty(1 << 16, device="cuda"), ops_per_element=64) > 0
    tokens = torch.from_numpy(rng.standard_normal(256 * 128).astype(np.float32)).cuda()
    cycle = ekv.inference_cycle(tokens, 256, 128, 8, 1.0)
    assert cycle.relative_error < 1e-5 and cycle.elastic_total_ms > 0


def torch_attention():
    """examples/torch/ekv_torch.py's module."""
    sys.path.insert(0, str(PACKAGE.parent / "torch"))
    import ekv_torch
    return ekv_torch


@pytest.mark.skipif(not has_gpu(), reason="no GPU visible")
def test_torch_operations_on_the_current_stream_and_in_a_cuda_graph():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    config = small_config(ekv.GGMLType.FP16, max_block_num=64)
    attention = torch_attention().EkvAttention(config)
    k = rng.uniform(-1, 1, (2, 45, 2, 64)).astype(np.float16)
    v = rng.uniform(-1, 1, (2, 45, 2, 64)).astype(np.float16)
    q = rng.uniform(-1, 1, (2, 8, 64)).astype(np.float16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # a side stream: the calls must order on it, not on the default one
        for layer in range(2):
            attention.append(layer, torch.from_numpy(k).cuda(), torch.from_numpy(v).cuda())
        static_q = torch.from_numpy(q).cuda()
        out, lse = attention.attn(static_q, 0, 0)
    stream.synchronize()
    assert attention.last_attn_exact
    for b in range(2):
        want_o, want_lse = reference(q[b], k[b], v[b], 4)
        assert relative_error(out.cpu().numpy()[b], want_o) < 2e-3
        np.testing.assert_allclose(lse.cpu().numpy()[b], want_lse, atol=1e-2)

    # captured after that warm-up, replayed after appends: it attends the tokens they added
    graph = torch.cuda.CUDAGraph()
    static_out, static_lse = torch.full_like(out, float("nan")), torch.full_like(lse, float("nan"))
    with torch.cuda.graph(graph):
        attention.attn(static_q, 0, 1, out=static_out, lse=static_lse)
    for extra in (3, 20):  # to 48 tokens, then 68 (new blocks)
        more_k = rng.uniform(-1, 1, (2, extra, 2, 64)).astype(np.float16)
        more_v = rng.uniform(-1, 1, (2, extra, 2, 64)).astype(np.float16)
        attention.append(0, torch.from_numpy(more_k).cuda(), torch.from_numpy(more_v).cuda())
        k, v = np.concatenate([k, more_k], axis=1), np.concatenate([v, more_v], axis=1)
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for b in range(2):
            want_o, want_lse = reference(q[b], k[b], v[b], 4)
            assert relative_error(static_out.cpu().numpy()[b], want_o) < 2e-3
            np.testing.assert_allclose(static_lse.cpu().numpy()[b], want_lse, atol=1e-2)
    with pytest.raises(ValueError, match="supported: a CUDA device"):
        torch_attention().EkvAttention(config, device="cpu")
