#!/usr/bin/env python3
"""Time PyTorch SDPA (the peer of ekv's decode attention) on ekv's benchmark shapes.

One query token per sequence, GQA via enable_gqa=True. Every sample starts from a
cold L2 so the numbers are comparable with ekv's cold-cache benchmarks, and the
device's own read/copy bandwidth is measured in the same run to give a roofline.
"""
import argparse
import contextlib
import json
import sys

DTYPES = {"fp16": 2, "bf16": 2, "fp32": 4}
SCRATCH_BYTES = 256 << 20  # several times the H100/H200 L2 (50/60 MB), so writing it evicts K/V
BW_BYTES = 1 << 30


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x4096,1x32768,1x131072,16x32768,16x131072,64x4096,1x1048576",
                   help="comma list of BATCHxKV_LEN")
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", metavar="FILE")
    return p.parse_args()


def pct(xs, q):
    """Linear-interpolated percentile, so q=0.5 is the true median for even counts."""
    s = sorted(xs)
    i = q * (len(s) - 1)
    lo = int(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def time_us(torch, fn, scratch, reps, warmup):
    """Per-sample GPU time of fn in microseconds, L2 flushed before every sample."""
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(reps)]
    for start, end in ev:
        scratch.sum()  # outside the events; a read leaves L2 clean (a write would leave dirty lines to write back)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 for s, e in ev]


def record_time(torch, row, fn, nbytes, scratch, reps, warmup, read_bw):
    """Adds fn's cold-L2 median, p5 and p95 (us) and its rates over nbytes to row."""
    t = time_us(torch, fn, scratch, reps, warmup)
    med = pct(t, 0.5)
    gbps = nbytes / med / 1e3
    row.update(median_us=med, p5_us=pct(t, 0.05), p95_us=pct(t, 0.95), GBps=gbps,
               of_read=gbps / read_bw if read_bw else None)


def bandwidths(torch, scratch):
    """Read-only (reduction) and copy GB/s on 1 GiB buffers, median of 30 cold samples."""
    x = torch.ones(BW_BYTES // 2, dtype=torch.float16, device="cuda")
    read = BW_BYTES / pct(time_us(torch, lambda: torch.sum(x, dtype=torch.float32), scratch, 30, 3), 0.5) / 1e3
    dst = torch.empty_like(x)
    copy = 2 * BW_BYTES / pct(time_us(torch, lambda: dst.copy_(x), scratch, 30, 3), 0.5) / 1e3
    del x, dst
    torch.cuda.empty_cache()
    return read, copy


def pick_backend(torch, q, k, v):
    """cuDNN if it accepts the shape and agrees with the default path, else the default."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = sdpa(q, k, v, enable_gqa=True)
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = sdpa(q, k, v, enable_gqa=True)
        torch.cuda.synchronize()
        # A fast but wrong cuDNN result would make the comparison meaningless.
        if torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2):
            return "cudnn", lambda: sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), None
        note = "cudnn output differs from default; using default"
    except Exception as e:  # noqa: BLE001 - typically "No available kernel" for this dtype/shape
        note = f"cudnn rejected: {str(e).splitlines()[0][:200] if str(e) else repr(e)}"
    return "default", contextlib.nullcontext, note


def run_shape(torch, args, batch, kv_len, scratch, read_bw):
    dt = getattr(torch, {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[args.dtype])
    es = DTYPES[args.dtype]
    nbytes = (2 * batch * args.kv_heads * kv_len * args.head_dim * es   # K + V
              + 2 * batch * args.q_heads * args.head_dim * es)          # q + out
    base = {"shape": f"{batch}x{kv_len}", "batch": batch, "kv_len": kv_len, "bytes": nbytes}
    try:
        q = torch.randn(batch, args.q_heads, 1, args.head_dim, dtype=dt, device="cuda")
        k = torch.randn(batch, args.kv_heads, kv_len, args.head_dim, dtype=dt, device="cuda")
        v = torch.randn_like(k)
        backend, ctx, note = pick_backend(torch, q, k, v)
    except Exception as e:  # noqa: BLE001 - one bad shape must not stop the others
        return [dict(base, mode=m, backend=None, error=repr(e)) for m in ("stream", "graph")]

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call():
        with ctx():
            return sdpa(q, k, v, enable_gqa=True)

    def make_graph():
        # Capture needs warm-up on a side stream (lazy init, cuDNN plan build) per the docs.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                call()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            call()
        return g.replay

    rows = []
    for mode in ("stream", "graph"):
        row = dict(base, mode=mode, backend=backend)
        if note:
            row["note"] = note
        try:
            fn = call if mode == "stream" else make_graph()
            record_time(torch, row, fn, nbytes, scratch, args.reps, args.warmup, read_bw)
        except Exception as e:  # noqa: BLE001
            row["error"] = repr(e)
        rows.append(row)
    del q, k, v
    torch.cuda.empty_cache()
    return rows


def main():
    args = parse_args()
    import torch  # after argparse so --help works without torch
    print(f"torch {torch.__version__}")
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    dev = torch.cuda.get_device_name()
    print(f"device {dev}")
    scratch = torch.zeros(SCRATCH_BYTES, dtype=torch.uint8, device="cuda")
    try:
        read_bw, copy_bw = bandwidths(torch, scratch)
    except Exception as e:  # noqa: BLE001
        print(f"bandwidth measurement failed: {e!r}", file=sys.stderr)
        read_bw = copy_bw = None
    print(f"read {read_bw or 0:.0f} GB/s   copy {copy_bw or 0:.0f} GB/s (read+write bytes)")
    print(f"{args.dtype} q_heads={args.q_heads} kv_heads={args.kv_heads} head_dim={args.head_dim} "
          f"reps={args.reps} cold L2\n")

    rows = []
    for spec in args.shapes.split(","):
        batch, kv_len = (int(x) for x in spec.lower().split("x"))
        rows += run_shape(torch, args, batch, kv_len, scratch, read_bw)

    hdr = f"{'shape':>10} {'mode':>6} {'backend':>8} {'median_us':>10} {'p5_us':>9} {'p95_us':>9} {'GB/s':>8} {'of_read':>7}"
    print(hdr)
    for r in rows:
        lead = f"{r['shape']:>10} {r['mode']:>6} {str(r['backend']):>8}"
        if "error" in r:
            print(f"{lead} ERROR {r['error'][:100]}")
        else:
            frac = f"{r['of_read']:.2f}" if r["of_read"] is not None else "-"
            print(f"{lead} {r['median_us']:>10.1f} {r['p5_us']:>9.1f} {r['p95_us']:>9.1f} "
                  f"{r['GBps']:>8.0f} {frac:>7}")

    if args.json:
        doc = {"schema_version": 1, "device": dev, "torch": torch.__version__,
               "dtype": args.dtype, "q_heads": args.q_heads, "kv_heads": args.kv_heads,
               "head_dim": args.head_dim, "reps": args.reps,
               "read_GBps": read_bw, "copy_GBps": copy_bw, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
