"""Tokens per second of a transformers Llama decode loop with the model's own attention,
ekv exact and ekv elastic attention, and the attention time per token.

    # the Llama-3-8B-shaped model with random weights (32 layers, 32/8 heads, dim 128)
    EKV_LIBRARY=build/libekv_c.so PYTHONPATH=examples/python:examples/torch \\
        python3 examples/model/decode_speed.py --llama3-8b --contexts 32768,131072 --batches 1,16
    # train_retrieval.py's model, with a greedy-token check of ekv exact against its own attention
    ... decode_speed.py --checkpoint /tmp/ekv-model --contexts 8192 --batches 1,16

Every decode step runs the whole model (model.model and lm_head, float16) on one token
per sequence, explicit position_ids, use_cache=False, with one of five attention
functions (transformers' AttentionInterface), each owning its cache:
- own: the model's SDPA (transformers' sdpa_attention_forward, attention_mask None, so
  SDPA's own GQA) over a preallocated cache per layer written in place, the cache a
  serving loop keeps (the fair peer);
- own_dynamic: transformers' DynamicCache.update (a torch.cat of the layer's whole cache
  every step, what generate() does by default) then the same SDPA;
- exact / elastic: ekv_torch.EkvAttention (one ekv.KVCache on the GPU): append the
  token's K and V, then cache.attn on torch's current stream, exact or elastic at
  compression C (ekv's default sink and window: 1 block each; pick_block_num =
  ceil(blocks / C) - 2; the selection is redone every step);
- none: no attention (zeros, no cache): the rest of the step, the work attention
  cannot make cheaper.
Caches are filled with random K and V (the timing does not depend on them); the
checkpoint's greedy check prefills with the model itself.

Per (context, batch, attention), three measurements:
- step_ms, tokens_per_s: --warmup steps, then --steps steps timed end to end (batch *
  steps / seconds). transformers' eager loop spends about a millisecond of host time
  per layer, so at batch 1 these are bound by the host, not by the GPU (the none row says
  by how much);
- attention_in_loop_ms: --steps more steps with a device synchronisation before every
  attention call and CUDA events around it, summed over the layers: what attention adds
  to an eager step, host time included (ekv's Python calls, the cache's cat);
- attention_ms (own, exact, elastic): the attention alone, every layer's SDPA or
  cache.attn over the filled cache captured once into a CUDA graph and replayed
  (--replays, median, L2 flushed between replays): the GPU time of attention per token,
  what a serving loop that graphs its steps pays, and what the issue's goal compares.
The bound the non-attention work sets: the weights' bytes (all but the embedding table)
read once per step at the read ceiling (the best of torch's read kernels over 4 GiB, or
--ceiling-gbps, e.g. ekv-bench's); batch / that time is the tokens/s no attention can
beat."""
import argparse
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

import ekv  # noqa: E402
from ekv_torch import EkvAttention  # noqa: E402
import retrieval_task  # noqa: E402
from run_info import commit  # noqa: E402

ATTENTIONS = ("own", "own_dynamic", "exact", "elastic", "none")
GRAPHED = ("own", "exact", "elastic")


def parse_args(argv=None):
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="train_retrieval.py's --out directory")
    model.add_argument("--llama3-8b", action="store_true", help="random weights at Llama-3-8B's shapes")
    p.add_argument("--layers", type=int, default=32, help="--llama3-8b: decoder layers")
    p.add_argument("--contexts", type=ints, default=[32768, 131072])
    p.add_argument("--batches", type=ints, default=[1, 16])
    p.add_argument("--attentions", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   default=list(ATTENTIONS), help=",".join(ATTENTIONS))
    p.add_argument("--compression", type=int, default=8, help="elastic: C")
    p.add_argument("--anchor", type=lambda t: ekv.AnchorType[t.upper()], default=ekv.AnchorType.QUEST)
    p.add_argument("--retrieval", type=lambda t: ekv.RetrievalType[t.upper()], default=ekv.RetrievalType.KVHEAD)
    p.add_argument("--block-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--replays", type=int, default=20, help="replays of the attention graph")
    p.add_argument("--greedy-tokens", type=int, default=32, help="--checkpoint: tokens of the greedy check (0: none)")
    p.add_argument("--ceiling-gbps", type=float, default=None, help="the read ceiling (default: measured here)")
    p.add_argument("--json", help="where to write the rows")
    args = p.parse_args(argv)
    for a in args.attentions:
        if a not in ATTENTIONS:
            p.error(f"--attentions: {a!r} is not one of {', '.join(ATTENTIONS)}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (torch.cuda.is_available() is False)")
    return args


class DecodeAttention:
    """The attention function "ekv_decode" (AttentionInterface) for one-token decode steps;
    `kind` picks what it does (the module docstring), `timed` brackets every call with a
    synchronisation and CUDA events."""

    def __init__(self):
        self.kind, self.own, self.ekv, self.step, self.pick = None, None, None, 0, -1
        self.timed, self.events = False, []
        self.calls = self.exact_calls = 0

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if query.shape[2] != 1:
            raise RuntimeError(f"DecodeAttention: {query.shape[2]} query tokens; it decodes one at a time")
        if self.timed:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        out = self._attend(module, query, key, value, scaling, **kwargs)
        if self.timed:
            end.record()
            self.events.append((start, end))
        return out, None

    def _attend(self, module, query, key, value, scaling, **kwargs):
        batch, heads, _, d = query.shape
        if self.kind == "none":
            return torch.zeros(batch, 1, heads, d, dtype=query.dtype, device=query.device)
        if self.kind in ("own", "own_dynamic"):
            k, v = self.own.update(key, value, module.layer_idx)
            out, _ = sdpa_attention_forward(module, query, k, v, None, dropout=0.0, scaling=scaling, **kwargs)
            return out
        layer = module.layer_idx
        self.ekv.append(layer, key.transpose(1, 2), value.transpose(1, 2))
        out, _ = self.ekv.attn(query[:, :, 0], layer, self.step, pick_block_num=self.pick)
        self.calls += 1
        self.exact_calls += int(self.ekv.last_attn_exact)
        return out.view(batch, 1, heads, d)

    def take_seconds(self):
        torch.cuda.synchronize()
        seconds = sum(s.elapsed_time(e) for s, e in self.events) / 1e3
        self.events = []
        return seconds


HOOK = DecodeAttention()
AttentionInterface.register("ekv_decode", HOOK)


def build_model(args):
    if args.checkpoint:
        model = LlamaForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float16, attn_implementation="sdpa")
        return model.to("cuda").eval()
    max_context = max(args.contexts) + args.warmup + 2 * args.steps + 64
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=args.layers, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=max_context, rope_theta=500000.0, rms_norm_eps=1e-5,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def read_ceiling_gbps(gib=4, repeats=10):
    """The best of torch's read kernels (sum, amax, a float32 view's sum) over `gib` GiB of
    float16, median of `repeats` (the tensor is 70x L2, so every read is cold)."""
    x = torch.randn(gib << 29, dtype=torch.float16, device="cuda")
    kernels = {"sum": lambda: x.sum(), "amax": lambda: x.amax(),
               "sum of float32 view": lambda: x.view(torch.float32).sum()}
    best = {}
    for name, fn in kernels.items():
        fn()
        times = []
        for _ in range(repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        best[name] = x.numel() * 2 / sorted(times)[len(times) // 2] / 1e9
    del x
    torch.cuda.empty_cache()
    return max(best.values()), best


def kv_bytes(config, batch, context):
    return 2 * config.num_hidden_layers * batch * context * config.num_key_value_heads * config.head_dim * 2


class StaticKV:
    """The own attention's cache: per layer K and V [batch][kv_heads][capacity][head_dim]
    float16, written in place; update() is DynamicCache.update's interface and returns
    views of the tokens held."""

    def __init__(self, config, batch, context, capacity):
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        self.k = [torch.empty(shape, dtype=torch.float16, device="cuda") for _ in range(config.num_hidden_layers)]
        self.v = [torch.empty_like(k) for k in self.k]
        for t in self.k + self.v:
            t[:, :, :context].normal_()
        self.lengths = [context] * config.num_hidden_layers

    def update(self, key, value, layer):
        n, new = self.lengths[layer], key.shape[2]
        self.k[layer][:, :, n:n + new].copy_(key)
        self.v[layer][:, :, n:n + new].copy_(value)
        self.lengths[layer] = n + new
        return self.k[layer][:, :, :n + new], self.v[layer][:, :, :n + new]


def fill_own(config, batch, context, dynamic, capacity):
    if not dynamic:
        return StaticKV(config, batch, context, capacity)
    cache = DynamicCache()
    shape = (batch, config.num_key_value_heads, context, config.head_dim)
    for layer in range(config.num_hidden_layers):
        cache.update(torch.randn(shape, dtype=torch.float16, device="cuda"),
                     torch.randn(shape, dtype=torch.float16, device="cuda"), layer)
    return cache


def ekv_cache_for(config, args, batch, context):
    blocks = math.ceil((context + args.warmup + 2 * args.steps + 1) / args.block_len)
    kv_config = ekv.KVCacheConfig(
        layer_num=config.num_hidden_layers, kv_head_num=config.num_key_value_heads,
        q_head_num=config.num_attention_heads, head_dim=config.head_dim, block_len=args.block_len,
        anchor_type=args.anchor, retrieval_type=args.retrieval, kv_type=ekv.GGMLType.FP16,
        max_batch_size=batch, max_block_num=batch * blocks)
    return EkvAttention(kv_config)


def fill_ekv(attention, config, batch, context, chunk=16384):
    shape = (batch, None, config.num_key_value_heads, config.head_dim)
    for layer in range(config.num_hidden_layers):
        for first in range(0, context, chunk):
            n = min(chunk, context - first)
            k = torch.randn((shape[0], n) + shape[2:], dtype=torch.float16, device="cuda")
            v = torch.randn_like(k)
            attention.append(layer, k, v)
    torch.cuda.synchronize()


def elastic_pick(context, block_len, c):
    blocks = math.ceil(context / block_len)
    return max(0, max(1, math.ceil(blocks / c)) - 2)


@torch.no_grad()
def decode_steps(model, tokens, position, steps, first_step):
    """`steps` decode steps from token ids tokens int64 [batch] at position; returns the
    last step's greedy tokens."""
    batch = tokens.shape[0]
    ids = tokens[:, None]
    for i in range(steps):
        HOOK.step = first_step + i
        positions = torch.full((batch, 1), position + i, device="cuda", dtype=torch.long)
        hidden = model.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        ids = model.lm_head(hidden[:, -1:]).argmax(-1)
    return ids[:, 0]


def measure(model, args, batch, context, kind):
    """A row: tokens/s end to end and attention seconds per step, for one attention."""
    config = model.config
    HOOK.kind, HOOK.own, HOOK.ekv, HOOK.pick, HOOK.calls, HOOK.exact_calls = kind, None, None, -1, 0, 0
    capacity = context + args.warmup + 2 * args.steps + 1
    if kind in ("own", "own_dynamic"):
        HOOK.own = fill_own(config, batch, context, kind == "own_dynamic", capacity)
    elif kind in ("exact", "elastic"):
        HOOK.ekv = ekv_cache_for(config, args, batch, context)
        fill_ekv(HOOK.ekv, config, batch, context)
        if kind == "elastic":
            HOOK.pick = elastic_pick(context, args.block_len, args.compression)
    model.set_attn_implementation("ekv_decode")
    tokens = torch.randint(0, config.vocab_size, (batch,), device="cuda")
    position = context
    tokens = decode_steps(model, tokens, position, args.warmup, 0)
    position += args.warmup
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = decode_steps(model, tokens, position, args.steps, args.warmup)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    position += args.steps
    HOOK.timed, HOOK.events = True, []
    decode_steps(model, tokens, position, args.steps, args.warmup + args.steps)
    HOOK.timed = False
    attention = HOOK.take_seconds() / args.steps
    row = {"context": context, "batch": batch, "attention": kind, "step_ms": seconds * 1e3,
           "tokens_per_s": batch / seconds, "attention_in_loop_ms": attention * 1e3}
    if kind in GRAPHED:
        row["attention_ms"] = attention_graph_seconds(config, args, batch, kind) * 1e3
    if kind == "elastic":
        row.update(C=args.compression, anchor=args.anchor.name, retrieval=args.retrieval.name,
                   pick_block_num=HOOK.pick, blocks=math.ceil(context / args.block_len),
                   exact_fallback_share=HOOK.exact_calls / max(1, HOOK.calls))
    if HOOK.ekv is not None:
        HOOK.ekv.cache.close()
    HOOK.own = HOOK.ekv = None
    torch.cuda.empty_cache()
    return row


@torch.no_grad()
def attention_graph_seconds(config, args, batch, kind):
    """Median seconds of one replay of a CUDA graph holding every layer's attention (own:
    SDPA over the StaticKV's tokens; exact, elastic: cache.attn) for random queries, with
    a 256 MiB write between replays so that each reads K and V from memory."""
    heads, d, layers = config.num_attention_heads, config.head_dim, config.num_hidden_layers
    q = torch.randn(batch, heads, d, dtype=torch.float16, device="cuda")
    out = torch.empty(layers, batch, heads, d, dtype=torch.float16, device="cuda")
    lse = torch.empty(layers, batch, heads, dtype=torch.float32, device="cuda")
    scaling = d ** -0.5
    step = HOOK.step + 1  # a step that selects anew (token_step 1)

    def body():
        for layer in range(layers):
            if kind == "own":
                n = HOOK.own.lengths[layer]
                k, v = HOOK.own.k[layer][:, :, :n], HOOK.own.v[layer][:, :, :n]
                out[layer].copy_(torch.nn.functional.scaled_dot_product_attention(
                    q[:, :, None], k, v, scale=scaling, enable_gqa=True)[:, :, 0])
            else:
                HOOK.ekv.attn(q, layer, step, pick_block_num=HOOK.pick, out=out[layer], lse=lse[layer])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()  # plans, workspaces and selections are made outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(args.replays):
        flush.fill_(1)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del graph, flush
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def greedy_check(model, args, context=8192, batch=8):
    """ekv exact against the model's own attention on retrieval prompts: both prefilled by
    the model (its SDPA and a DynamicCache, whose K and V fill ekv's cache), then
    --greedy-tokens greedy tokens each. Returns the share of sequences whose tokens are
    identical, and the largest |logit difference| while they agree."""
    meta = json.loads((pathlib.Path(args.checkpoint) / "task.json").read_text())
    task = retrieval_task.Task(**meta["task"])
    samples = task.eval_samples(1234, context, batch)
    prompt = torch.as_tensor([s["prompt"] for s in samples]).cuda()
    model.set_attn_implementation("sdpa")
    prefill = DynamicCache()
    logits0 = model(input_ids=prompt, past_key_values=prefill, use_cache=True).logits[:, -1].float()
    config = model.config
    HOOK.ekv = ekv_cache_for(config, argparse.Namespace(**{**vars(args), "steps": args.greedy_tokens}), batch,
                             prompt.shape[1])
    for layer in range(config.num_hidden_layers):
        k, v = _layer_kv(prefill, layer)
        HOOK.ekv.append(layer, k.transpose(1, 2), v.transpose(1, 2))
    results = {}
    for kind in ("own_dynamic", "exact"):
        HOOK.kind, HOOK.own, HOOK.pick = kind, prefill if kind == "own_dynamic" else None, -1
        model.set_attn_implementation("ekv_decode")
        ids, rows = logits0.argmax(-1), []
        for i in range(args.greedy_tokens):
            HOOK.step = i
            positions = torch.full((batch, 1), prompt.shape[1] + i, device="cuda", dtype=torch.long)
            hidden = model.model(input_ids=ids[:, None], position_ids=positions, use_cache=False).last_hidden_state
            logits = model.lm_head(hidden[:, -1]).float()
            rows.append((ids, logits))
            ids = logits.argmax(-1)
        results[kind] = rows
    HOOK.ekv.cache.close()
    HOOK.ekv = HOOK.own = None
    own_tokens = torch.stack([ids for ids, _ in results["own_dynamic"]], 1)
    ekv_tokens = torch.stack([ids for ids, _ in results["exact"]], 1)
    same = (own_tokens == ekv_tokens).all(1)
    diff = max((a[1] - b[1]).abs().max().item() for a, b in zip(results["own_dynamic"], results["exact"]))
    answers = torch.as_tensor([s["answer"] for s in samples]).cuda()
    value_len = answers.shape[1]
    return {"context": context, "sequences": batch, "tokens": args.greedy_tokens,
            "identical_share": same.float().mean().item(), "max_abs_logit_diff": diff,
            "own_answers_right": (own_tokens[:, :value_len] == answers).all(1).float().mean().item(),
            "ekv_answers_right": (ekv_tokens[:, :value_len] == answers).all(1).float().mean().item()}


def _layer_kv(cache, layer):
    """A DynamicCache's K and V of one layer, [batch][kv_heads][tokens][head_dim]."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


def table(rows, weights_bytes, ceiling):
    lines = ["| context | batch | attention | step ms | tokens/s | attention in the loop, ms per step | "
             "attention alone (graph), ms per step | own attention / this (graph) |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        own = next((o for o in rows if o["attention"] == "own" and o["context"] == r["context"]
                    and o["batch"] == r["batch"]), None)
        ratio = (f"{own['attention_ms'] / r['attention_ms']:.2f}x" if own and r.get("attention_ms") else "-")
        graph = f"{r['attention_ms']:.3f}" if "attention_ms" in r else "-"
        name = r["attention"] + (f" C={r['C']} {r['anchor']}/{r['retrieval']}" if r["attention"] == "elastic" else "")
        if r.get("exact_fallback_share"):
            name += f" (exact in {100 * r['exact_fallback_share']:.0f}% of calls)"
        lines.append(f"| {r['context']} | {r['batch']} | {name} | {r['step_ms']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['attention_in_loop_ms']:.3f} | {graph} | {ratio} |")
    bound_ms = weights_bytes / (ceiling * 1e9) * 1e3
    lines.append(f"\nweights read per step: {weights_bytes / 2**30:.2f} GiB; at the read ceiling "
                 f"{ceiling:.0f} GB/s that is {bound_ms:.2f} ms per step: at most {1e3 / bound_ms:.1f} steps/s "
                 "(batch x that in tokens/s), whatever the attention")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args)
    config = model.config
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    if args.ceiling_gbps:
        ceiling, kernels = args.ceiling_gbps, {"given": args.ceiling_gbps}
    else:
        ceiling, kernels = read_ceiling_gbps()
    gpu = torch.cuda.get_device_name()
    print(f"model: {'random Llama-3-8B shapes' if args.llama3_8b else args.checkpoint}, {config.num_hidden_layers} "
          f"layers, {config.num_attention_heads}/{config.num_key_value_heads} heads of {config.head_dim}, "
          f"{weights / 2**30:.2f} GiB of weights read per step; {gpu}; read ceiling {ceiling:.0f} GB/s "
          f"({', '.join(f'{k} {v:.0f}' for k, v in kernels.items())})", flush=True)
    result = {"command": [sys.executable] + sys.argv, "commit": commit(), "gpu": gpu, "torch": torch.__version__,
              "transformers": transformers.__version__, "weights_bytes": weights, "read_ceiling_gbps": ceiling,
              "read_kernels_gbps": kernels, "args": {k: getattr(v, "name", v) for k, v in vars(args).items()},
              "rows": [], "skipped": []}
    if args.checkpoint and args.greedy_tokens:
        check = greedy_check(model, args)
        result["greedy"] = check
        print(f"greedy check at {check['context']} tokens, {check['sequences']} sequences x {check['tokens']} "
              f"tokens: ekv exact identical to own in {100 * check['identical_share']:.0f}% of sequences, max |logit "
              f"difference| {check['max_abs_logit_diff']:.4g}; answers right: own "
              f"{check['own_answers_right']:.3f}, ekv {check['ekv_answers_right']:.3f}", flush=True)
    free = torch.cuda.mem_get_info()[0]
    for context in args.contexts:
        for batch in args.batches:
            need = kv_bytes(config, batch, context) * 1.1 + (2 << 30)
            if need > free:
                why = (f"context {context} x batch {batch}: a cache of {kv_bytes(config, batch, context) / 2**30:.0f} "
                       f"GiB does not fit the {free / 2**30:.0f} GiB free beside the weights")
                result["skipped"].append(why)
                print("skipped:", why, flush=True)
                continue
            for kind in args.attentions:
                row = measure(model, args, batch, context, kind)
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    print()
    print(table(result["rows"], weights, ceiling))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
