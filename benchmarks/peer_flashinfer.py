#!/usr/bin/env python3
"""Time FlashInfer (the second peer of ekv's decode attention) on ekv's benchmark shapes.

Dense decode: BatchDecodeWithPagedKVCacheWrapper over one paged cache per shape (pages
[num_pages][2][page][kv_heads][head_dim], "NHD", page ids shuffled so a sequence's pages are
not neighbours), page sizes 16 and 64, tensor cores off and on. Block-sparse: at batch 1,
BlockSparseAttentionWrapper (backend fa2) over 1/C of the 64-token blocks, the first and the
last always among them: the attend part of an elastic step, without selection. Every
configuration's output is checked against PyTorch SDPA on the same tokens before it is
timed; samples start from a cold L2 and are timed with CUDA events (peer_sdpa.py's helpers).
FlashInfer comes from ../shared/peers/flashinfer-prep.sh (.fi/), installed on the GPU
machine as that script says; its kernels are JIT-compiled on first use.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_sdpa  # noqa: E402  (pct, time_us, bandwidths, SCRATCH_BYTES)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x4096,1x32768,1x131072,16x32768,16x131072,64x4096,1x1048576",
                   help="comma list of BATCHxKV_LEN")
    p.add_argument("--pages", default="16,64", help="page sizes")
    p.add_argument("--sparse-shapes", default="1x32768,1x131072,1x1048576", help="batch-1 shapes for block-sparse")
    p.add_argument("--compress", default="2,4,8,16", help="C values for block-sparse (1/C of the blocks)")
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", metavar="FILE")
    return p.parse_args()


def close(torch, got, want):
    return torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def dense_rows(torch, fi, args, batch, kv_len, scratch, read_bw, workspace):
    dt = torch.float16
    nbytes = 2 * batch * args.kv_heads * kv_len * args.head_dim * 2 + 2 * batch * args.q_heads * args.head_dim * 2
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows = []
    for page in (int(x) for x in args.pages.split(",")):
        base = {"kind": "dense", "shape": f"{batch}x{kv_len}", "batch": batch, "kv_len": kv_len, "page": page,
                "bytes": nbytes}
        pages_per_seq = math.ceil(kv_len / page)
        num_pages = batch * pages_per_seq
        try:
            cache = torch.randn(num_pages, 2, page, args.kv_heads, args.head_dim, dtype=dt, device="cuda")
            indices = torch.randperm(num_pages, device="cuda", dtype=torch.int64).to(torch.int32)
            indptr = torch.arange(0, num_pages + 1, pages_per_seq, device="cuda", dtype=torch.int32)
            last = torch.full((batch,), kv_len - (pages_per_seq - 1) * page, device="cuda", dtype=torch.int32)
            q = torch.randn(batch, args.q_heads, args.head_dim, dtype=dt, device="cuda")
            # the reference for the first and the last sequence: their tokens gathered, SDPA
            refs = {}
            for b in sorted({0, batch - 1}):
                ids = indices[b * pages_per_seq:(b + 1) * pages_per_seq].long()
                k = cache[ids, 0].reshape(-1, args.kv_heads, args.head_dim)[:kv_len].transpose(0, 1)[None]
                v = cache[ids, 1].reshape(-1, args.kv_heads, args.head_dim)[:kv_len].transpose(0, 1)[None]
                refs[b] = sdpa(q[b:b + 1, :, None, :], k, v, enable_gqa=True)[0, :, 0, :]
        except Exception as e:  # noqa: BLE001 - one bad shape must not stop the others
            rows.append(dict(base, error=repr(e)))
            continue
        for tc in (False, True):
            row = dict(base, tensor_cores=tc)
            try:
                w = fi.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=tc)
                w.plan(indptr, indices, last, args.q_heads, args.kv_heads, args.head_dim, page,
                       pos_encoding_mode="NONE", q_data_type=dt, kv_data_type=dt)
                out = w.run(q, cache)
                torch.cuda.synchronize()
                if not all(close(torch, out[b], ref) for b, ref in refs.items()):
                    row["error"] = "output differs from SDPA on the same tokens"
                else:
                    peer_sdpa.record_time(torch, row, lambda: w.run(q, cache), nbytes, scratch, args.reps,
                                          args.warmup, read_bw)
            except Exception as e:  # noqa: BLE001
                row["error"] = repr(e)[:300]
            rows.append(row)
        del cache, q, refs
        torch.cuda.empty_cache()
    return rows


def sparse_rows(torch, fi, args, kv_len, scratch, read_bw, workspace):
    dt = torch.float16
    block = 64
    sdpa = torch.nn.functional.scaled_dot_product_attention
    n_blocks = math.ceil(kv_len / block)
    k = torch.randn(kv_len, args.kv_heads, args.head_dim, dtype=dt, device="cuda")
    v = torch.randn_like(k)
    q = torch.randn(1, args.q_heads, args.head_dim, dtype=dt, device="cuda")
    rows = []
    for c in (float(x) for x in args.compress.split(",")):
        keep = max(2, math.ceil(n_blocks / c))
        middle = torch.randperm(n_blocks - 2, device="cuda")[:keep - 2] + 1
        chosen = torch.cat([torch.tensor([0, n_blocks - 1], device="cuda"), middle]).sort().values.to(torch.int32)
        tokens = min(kv_len, keep * block)  # the last block may be partial
        nbytes = 2 * args.kv_heads * tokens * args.head_dim * 2 + 2 * args.q_heads * args.head_dim * 2
        row = {"kind": "block_sparse", "shape": f"1x{kv_len}", "batch": 1, "kv_len": kv_len, "C": c,
               "blocks": keep, "of_blocks": n_blocks, "bytes": nbytes}
        try:
            w = fi.BlockSparseAttentionWrapper(workspace, backend="fa2")
            indptr = torch.tensor([0, keep], device="cuda", dtype=torch.int32)
            w.plan(indptr, chosen, 1, kv_len, 1, block, args.q_heads, args.kv_heads, args.head_dim,
                   q_data_type=dt, kv_data_type=dt, o_data_type=dt)
            out = w.run(q, k, v)
            idx = (chosen.long()[:, None] * block + torch.arange(block, device="cuda")[None]).flatten()
            idx = idx[idx < kv_len]
            ref = sdpa(q[:, :, None, :], k[idx].transpose(0, 1)[None], v[idx].transpose(0, 1)[None],
                       enable_gqa=True)[0, :, 0, :]
            torch.cuda.synchronize()
            if not close(torch, out.reshape(args.q_heads, args.head_dim), ref):
                row["error"] = "output differs from SDPA over the chosen blocks"
            else:
                peer_sdpa.record_time(torch, row, lambda: w.run(q, k, v), nbytes, scratch, args.reps, args.warmup,
                                      read_bw)
        except Exception as e:  # noqa: BLE001
            row["error"] = repr(e)[:300]
        rows.append(row)
    del k, v, q
    torch.cuda.empty_cache()
    return rows


def main():
    args = parse_args()
    import torch  # after argparse so --help works without torch
    try:
        import flashinfer as fi
    except ImportError as e:
        print(f"flashinfer not importable ({e}); see ../shared/peers/flashinfer-prep.sh", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    dev = torch.cuda.get_device_name()
    print(f"torch {torch.__version__} flashinfer {fi.__version__} device {dev}")
    scratch = torch.zeros(peer_sdpa.SCRATCH_BYTES, dtype=torch.uint8, device="cuda")
    read_bw, copy_bw = peer_sdpa.bandwidths(torch, scratch)
    print(f"read {read_bw:.0f} GB/s   copy {copy_bw:.0f} GB/s (read+write bytes)")
    print(f"fp16 q_heads={args.q_heads} kv_heads={args.kv_heads} head_dim={args.head_dim} reps={args.reps} cold L2\n")
    workspace = torch.zeros(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for spec in args.shapes.split(","):
        batch, kv_len = (int(x) for x in spec.lower().split("x"))
        rows += dense_rows(torch, fi, args, batch, kv_len, scratch, read_bw, workspace)
    for spec in filter(None, args.sparse_shapes.split(",")):
        batch, kv_len = (int(x) for x in spec.lower().split("x"))
        if batch != 1:
            print(f"block-sparse shapes are batch 1; skipping {spec}", file=sys.stderr)
            continue
        rows += sparse_rows(torch, fi, args, kv_len, scratch, read_bw, workspace)

    print(f"{'kind':>12} {'shape':>10} {'config':>14} {'median_us':>10} {'p5_us':>9} {'p95_us':>9} {'GB/s':>8} "
          f"{'of_read':>7}")
    for r in rows:
        if r["kind"] == "dense":
            config = f"page {r['page']} tc {'on' if r.get('tensor_cores') else 'off'}"
        else:
            config = f"C={r['C']:g} {r['blocks']}/{r['of_blocks']}"
        lead = f"{r['kind']:>12} {r['shape']:>10} {config:>14}"
        if "error" in r:
            print(f"{lead} ERROR {r['error'][:120]}")
        else:
            frac = f"{r['of_read']:.2f}" if r["of_read"] is not None else "-"
            print(f"{lead} {r['median_us']:>10.1f} {r['p5_us']:>9.1f} {r['p95_us']:>9.1f} {r['GBps']:>8.0f} "
                  f"{frac:>7}")
    if args.json:
        doc = {"schema_version": 1, "device": dev, "torch": torch.__version__, "flashinfer": fi.__version__,
               "q_heads": args.q_heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "reps": args.reps,
               "read_GBps": read_bw, "copy_GBps": copy_bw, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
