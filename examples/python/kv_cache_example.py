"""ekv's KV cache from Python: a prompt, decode steps attending exactly and elastically,
the error elastic costs, a dump and a load into a fresh cache that answers the same.
Runs on the CPU backend with numpy (no GPU needed); with --device cuda and torch, the
same on the GPU with torch CUDA tensors.

    pip install examples/python     # or PYTHONPATH=examples/python
    EKV_LIBRARY=build/libekv_c.so python examples/python/kv_cache_example.py
"""
import argparse
import os
import tempfile

import numpy as np

import ekv


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (needs torch)")
    parser.add_argument("--prompt", type=int, default=2048, help="prompt tokens")
    args = parser.parse_args()

    config = ekv.KVCacheConfig(layer_num=2, kv_head_num=8, q_head_num=32, head_dim=128, block_len=64,
                               anchor_type=ekv.AnchorType.QUEST, kv_type=ekv.GGMLType.FP16,
                               retrieval_type=ekv.RetrievalType.KVHEAD, max_block_num=64, max_batch_size=1,
                               max_thread_num=os.cpu_count() or 1)
    device = args.device
    if device == "cpu":
        to_device = np.ascontiguousarray
        to_host = np.asarray
    else:
        import torch  # only for device arrays: ekv itself never imports it
        to_device = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        to_host = lambda t: t.cpu().numpy()  # noqa: E731
    rng = np.random.default_rng(0)
    cache = ekv.KVCache(config, device=device)
    print(f"{device}: {config}")
    # keys of 4 "needle" blocks per layer point along a direction per kv head that the
    # queries share, as attention in a model concentrates on a few places; the rest is noise
    d, group = config.head_dim, config.q_head_num // config.kv_head_num
    direction = 0.7 * rng.standard_normal((config.kv_head_num, d))
    needles = rng.choice(np.arange(1, args.prompt // config.block_len - 1), 4, replace=False)
    shape = (1, args.prompt, config.kv_head_num, d)
    for layer in range(config.layer_num):  # prefill: [batch, tokens, kv_head_num, head_dim]
        k = 0.5 * rng.standard_normal(shape)
        for b in needles:
            k[0, b * config.block_len:(b + 1) * config.block_len] += direction
        cache.append(layer, to_device(k.astype(np.float16)), to_device(rng.standard_normal(shape).astype(np.float16)))
    q_shape = (1, config.q_head_num, d)
    o_exact = to_device(np.zeros(q_shape, np.float16))
    o_elastic = to_device(np.zeros(q_shape, np.float16))
    lse = to_device(np.zeros(q_shape[:2], np.float32))
    for step in range(4):  # decode: each layer appends its new token, then attends
        for layer in range(config.layer_num):
            token = (1, 1, config.kv_head_num, d)
            cache.append(layer, to_device((0.5 * rng.standard_normal(token)).astype(np.float16)),
                         to_device(rng.standard_normal(token).astype(np.float16)))
            q = np.repeat(direction, group, axis=0)[None] + 0.3 * rng.standard_normal(q_shape)
            q = to_device(q.astype(np.float16))
            cache.attn(q, o_exact, lse, layer, step)  # every block
            # 1 sink + 1 window block + 6 picked by their QUEST anchors' score
            cache.attn(q, o_elastic, lse, layer, step, pick_block_num=6, init_block_num=1, local_block_num=1)
            exact, elastic = (to_host(o).astype(np.float64) for o in (o_exact, o_elastic))
            error = np.linalg.norm(elastic - exact) / np.linalg.norm(exact)
        blocks = -(-cache.get_cache_total_len() // config.block_len)
        print(f"step {step}: {cache.get_cache_total_len()} tokens; elastic read 8 of {blocks} blocks, "
              f"{error:.4f} relative L2 from exact")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cache.safetensors")
        cache.dump_kvcache(path)
        loaded = ekv.KVCache(config, device=device)
        loaded.load_kvcache(path)
        o_loaded = to_device(np.zeros(q_shape, np.float16))
        loaded.attn(q, o_loaded, lse, 1, 4)
        cache.attn(q, o_exact, lse, 1, 4)
        same = np.array_equal(to_host(o_loaded), to_host(o_exact))
        print(f"dumped {os.path.getsize(path)} bytes, loaded into a fresh cache: outputs "
              f"{'identical' if same else 'DIFFERENT'}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
