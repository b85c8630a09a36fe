"""The bad-input matrix of the Python package's KVCache on the CPU backend (issue 21): each
call with each kind of invalid argument (out-of-range layer, sequence and block ids, wrong
dtype, rank or shape, read-only outputs, batch past max_batch_size, lengths past capacity,
a full pool, a stream for a CPU cache, a closed cache, missing files) raises, with a
message naming what was wrong, and leaves the cache's contents as they were: its dump
before and after each call is byte for byte the same. EKV_LIBRARY names libekv_c."""
import os
import pathlib
import sys

import numpy as np
import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"
sys.path.insert(0, str(PACKAGE))
import ekv  # noqa: E402

SEED = int(os.environ.get("EKV_TEST_SEED", np.random.SeedSequence().entropy % (1 << 32)))
KV, D, QH, BLOCK = 2, 64, 8, 16


def filled_cache():
    """3 layers of 40 blocks of 16 tokens, sequences of 50, 17 and 33 tokens (9 blocks)."""
    config = ekv.KVCacheConfig(layer_num=3, kv_head_num=KV, q_head_num=QH, head_dim=D, block_len=BLOCK,
                               kv_type=ekv.GGMLType.FP32, max_block_num=40, max_batch_size=3, max_thread_num=2)
    cache = ekv.KVCache(config)
    rng = np.random.default_rng(SEED)
    for layer in range(3):
        for batch, n in ((3, 17), (1, 33), (3, 16)):
            k = rng.uniform(-1, 1, (batch, n, KV, D)).astype(np.float32)
            cache.append(layer, k, k)
    return cache


def tokens(batch, n, dtype=np.float32):
    return np.zeros((batch, n, KV, D), dtype)


def q(batch=3, heads=QH, dtype=np.float32):
    return np.zeros((batch, heads, D), dtype)


def lse(batch=3, dtype=np.float32):
    return np.zeros((batch, QH), dtype)


def readonly(a):
    a.setflags(write=False)
    return a


BLOCK_SHAPE = (KV, BLOCK, D)
CASES = [
    # (what, call, exception, a part of the message)
    ("append layer 3", lambda c: c.append(3, tokens(1, 1), tokens(1, 1)), ekv.InvalidArgumentError, "layer 3"),
    ("append layer -1", lambda c: c.append(-1, tokens(1, 1), tokens(1, 1)), ekv.InvalidArgumentError, "layer -1"),
    ("append float16 into a float32 cache", lambda c: c.append(0, tokens(1, 1, np.float16), tokens(1, 1)),
     ekv.InvalidArgumentError, "k_new has dtype float16"),
    ("append K of rank 3", lambda c: c.append(0, np.zeros((1, KV, D), np.float32), tokens(1, 1)),
     ekv.InvalidArgumentError, "k_new has shape"),
    ("append V of another batch", lambda c: c.append(0, tokens(3, 1), tokens(1, 1)), ekv.InvalidArgumentError,
     "v_new has shape"),
    ("append a batch past max_batch_size", lambda c: c.append(0, tokens(4, 1), tokens(4, 1)),
     ekv.InvalidArgumentError, "max_batch_size=3"),
    ("append past a sequence's capacity", lambda c: c.append(0, tokens(1, 600), tokens(1, 600)),
     ekv.InvalidArgumentError, "cannot take 600 more"),
    ("append into a full pool", lambda c: c.append(0, tokens(1, 32 * BLOCK), tokens(1, 32 * BLOCK)),
     ekv.InvalidArgumentError, "the pool is full"),
    ("append a Python list", lambda c: c.append(0, [[1.0]], tokens(1, 1)), TypeError, "k_new"),
    ("append with a stream for a CPU cache", lambda c: c.append(0, tokens(1, 1), tokens(1, 1), stream=5),
     ekv.InvalidArgumentError, "stream"),
    ("attn layer 3", lambda c: c.attn(q(), q(), lse(), 3, 0), ekv.InvalidArgumentError, "layer 3"),
    ("attn q with a head too few", lambda c: c.attn(q(heads=QH - 1), q(), lse(), 0, 0), ekv.InvalidArgumentError,
     "q has shape [3, 7, 64]"),
    ("attn a read-only output", lambda c: c.attn(q(), readonly(q()), lse(), 0, 0), ValueError, "output"),
    ("attn lse in float16", lambda c: c.attn(q(), q(), lse(dtype=np.float16), 0, 0), ekv.InvalidArgumentError,
     "attn_lse has dtype float16"),
    ("attn generate_token_idx -1", lambda c: c.attn(q(), q(), lse(), 0, -1), ekv.InvalidArgumentError,
     "generate_token_idx=-1"),
    ("attn init_block_num -1", lambda c: c.attn(q(), q(), lse(), 0, 0, pick_block_num=2, init_block_num=-1),
     ekv.InvalidArgumentError, "init_block_num=-1"),
    ("attn cache_seqlens that are not the cache's",
     lambda c: c.attn(q(), q(), lse(), 0, 0, cache_seqlens=np.array([1, 2, 3], np.int32)), ValueError,
     "cache_seqlens"),
    ("update_cache_total_len -1", lambda c: c.update_cache_total_len(-1, 0), ekv.InvalidArgumentError,
     "cache_total_len=-1"),
    ("update_cache_total_len past capacity", lambda c: c.update_cache_total_len(641, 0), ekv.InvalidArgumentError,
     "cache_total_len=641"),
    ("update_cache_total_len into a full pool", lambda c: c.update_cache_total_len(576, 1),
     ekv.InvalidArgumentError, "the pool is full"),
    ("free_sequence 3", lambda c: c.free_sequence(3), ekv.InvalidArgumentError, "sequence 3"),
    ("get_cache_total_len of sequence -1", lambda c: c.get_cache_total_len(-1), ekv.InvalidArgumentError,
     "sequence -1"),
    ("update_kvcache_one_block block 40",
     lambda c: c.update_kvcache_one_block(np.zeros(BLOCK_SHAPE, np.float32), np.zeros(BLOCK_SHAPE, np.float32), 0,
                                          40), ekv.InvalidArgumentError, "block_idx 40"),
    ("update_kvcache_one_block layer 3",
     lambda c: c.update_kvcache_one_block(np.zeros(BLOCK_SHAPE, np.float32), np.zeros(BLOCK_SHAPE, np.float32), 3, 0),
     ekv.InvalidArgumentError, "layer 3"),
    ("update_kvcache_one_block K of another shape",
     lambda c: c.update_kvcache_one_block(np.zeros((KV, 8, D), np.float32), np.zeros(BLOCK_SHAPE, np.float32), 0, 0),
     ekv.InvalidArgumentError, "k has shape [2, 8, 64]"),
    ("get_kvcache_one_block into a read-only array",
     lambda c: c.get_kvcache_one_block(readonly(np.zeros(BLOCK_SHAPE, np.float32)), np.zeros(BLOCK_SHAPE, np.float32),
                                       0, 0), ValueError, "k"),
    ("update_importance_one_block in float16",
     lambda c: c.update_importance_one_block(np.zeros((KV, BLOCK), np.float16), 0, 0), ekv.InvalidArgumentError,
     "importance has dtype float16"),
    ("update_anchor_one_block of another shape",
     lambda c: c.update_anchor_one_block(np.zeros((KV, 2 * D - 1), np.float32), 0, 0), ekv.InvalidArgumentError,
     "anchor has shape [2, 127]"),
    ("load_kvcache of a missing file", lambda c: c.load_kvcache("no_such_dir/x.safetensors"),
     ekv.InvalidArgumentError, "cannot open no_such_dir/x.safetensors"),
    ("dump_kvcache into a missing directory", lambda c: c.dump_kvcache("no_such_dir/x.safetensors"),
     ekv.InvalidArgumentError, "cannot create no_such_dir"),
    ("the older dump_kvcache with another length",
     lambda c: c.dump_kvcache(c.block_table()[:1], 7, "x.safetensors"), ValueError, "cache_total_len=7"),
]


@pytest.fixture(scope="module")
def cache():
    c = filled_cache()
    yield c
    c.close()


def dump_of(cache, path):
    cache.dump_kvcache(str(path))
    return path.read_bytes()


@pytest.mark.parametrize("what,call,error,says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_and_changes_nothing(cache, tmp_path, what, call, error, says):
    before = dump_of(cache, tmp_path / "before.safetensors")
    with pytest.raises(error) as raised:
        call(cache)
    assert says in str(raised.value), str(raised.value)
    assert dump_of(cache, tmp_path / "after.safetensors") == before


def test_a_closed_cache_refuses_every_call():
    c = filled_cache()
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.append(0, tokens(1, 1), tokens(1, 1))
    with pytest.raises(ValueError, match="closed"):
        c.get_cache_total_len(0)


def test_the_matrix_counts_its_cases():
    print(f"{len(CASES)} bad-input cases over the Python KVCache")
    assert len(CASES) >= 30


def test_a_cache_too_large_for_the_host_raises_memory_error_and_changes_nothing(cache, tmp_path):
    """Out of memory (issue 21): 2^48 bytes of K a layer, past any x86-64 address space."""
    before = dump_of(cache, tmp_path / "before.safetensors")
    huge = ekv.KVCacheConfig(layer_num=1, kv_head_num=1024, q_head_num=1024, head_dim=128, block_len=16,
                             kv_type=ekv.GGMLType.FP16, max_block_num=1 << 26, max_batch_size=1, max_thread_num=1)
    with pytest.raises(MemoryError) as raised:
        ekv.KVCache(huge)
    assert isinstance(raised.value, ekv.OutOfMemoryError)
    assert "bytes of host memory" in str(raised.value), str(raised.value)
    assert dump_of(cache, tmp_path / "after.safetensors") == before
