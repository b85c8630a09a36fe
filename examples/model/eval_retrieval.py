"""Evaluates train_retrieval.py's model on retrieval_task.py's samples with its own
attention and with ekv's attention in the decode loop: exact, and elastic at compression
C for each anchor type and retrieval type. Writes JSON (--json) and prints a Markdown table.

    EKV_LIBRARY=build/libekv_c.so PYTHONPATH=examples/python \\
        python3 examples/model/eval_retrieval.py --checkpoint /tmp/ekv-model --json /tmp/ekv-model/eval.json

What is measured, per context length (--contexts) over --samples samples (needle depths
(i + 0.5) / n, passkey and multi-key alternating):
- own: the model's attention (transformers' SDPA, float16), one pass over prompt +
  answer[:-1].
- ekv: the prompt but its last token is prefilled with the model's own attention while
  each layer's K and V (after RoPE) go into an ekv.KVCache; then the prompt's last token
  and the answer's first value_len - 1 tokens are decoded one at a time (teacher forcing,
  explicit position_ids, use_cache=False), every layer attending over the cache with
  cache.attn: exact (pick_block_num=-1), or elastic with init_block_num sinks,
  local_block_num window blocks and pick_block_num blocks by score, reselected every step
  (token_step=1; generate_token_idx is the decode step). Every answer token is predicted
  under ekv's attention.
- accuracy: samples whose every answer token is the argmax, which under teacher forcing
  is exactly greedy decoding's accuracy (scoring.py); NLL: the answer tokens' mean
  negative log-likelihood (natural log). Exact rows also give the largest |logit
  difference| from own and the share of samples whose argmax tokens equal own's at every
  answer position.

The compression rule: blocks = ceil(context / block_len), total = max(1, ceil(blocks / C)),
pick_block_num = max(0, total - init_block_num - local_block_num); a step reads
min(blocks, init + local + pick) blocks.

DYNAMIC anchors need token importance: each key's prefill attention mass (softmax weight
summed over queries and over the query heads of its GQA group; the last
--importance-window queries, 0: all), given to the cache with update_importance_one_block.

Batches, and ekv's exact fallback: the GPU KVCache attends exactly wherever an elastic
step would skip fewer than 48 MB of K and V over the batch (ElasticProblem's
kElasticBreakEvenBytes) or read more than 3/4 of the blocks, and the C API has no switch
for that. One sequence of this model holds 4 MiB a layer at 8K tokens, so at batch 1 every
elastic step would be exact. The samples of a context are therefore decoded together,
--batch (64) sequences in each cache, where every FP16 elastic step from 2K tokens on
skips more, but 2K at C = 2 (16 of 32 blocks of 32 KiB, times 64 sequences: 33.5 MB, so
exact). Rows say which share of their calls fell back (that row, fewer samples, quantized
storage at short contexts). --elastic-device cpu runs the elastic rows on the CPU backend, which
attends elastically whenever asked but has no DYNAMIC anchors (those rows are skipped)."""
import argparse
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AttentionInterface, LlamaForCausalLM  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

import ekv  # noqa: E402
import retrieval_task  # noqa: E402
from run_info import commit  # noqa: E402
from scoring import own_attention_scores, score  # noqa: E402

RULE = ("blocks = ceil(context / block_len); total = max(1, ceil(blocks / C)); pick_block_num = max(0, total - "
        "init_block_num - local_block_num); a step reads min(blocks, init + local + pick) blocks")


def names(kind):
    return lambda text: [kind[x.strip().upper()] for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="train_retrieval.py's --out directory")
    p.add_argument("--json", help="where to write the results")
    p.add_argument("--contexts", type=ints, default=[2048, 4096, 8192])
    p.add_argument("--samples", type=int, default=64, help="per context")
    p.add_argument("--seed", type=int, default=1234, help="of the evaluation samples")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="the model's")
    p.add_argument("--cache-device", default=None, help="the ekv caches: cuda (default with a GPU) or cpu")
    p.add_argument("--elastic-device", default=None, help="the elastic rows' caches (default: --cache-device)")
    p.add_argument("--batch", type=int, default=64, help="sequences decoded together (a cache's max_batch_size)")
    p.add_argument("--block-len", type=int, default=64)
    p.add_argument("--kv-types", type=names(ekv.GGMLType), default=[ekv.GGMLType.FP16],
                   help="FP16, FP8, Q8_0, Q4_0 (comma list): every row for each")
    p.add_argument("--anchors", type=names(ekv.AnchorType), default=list(ekv.AnchorType))
    p.add_argument("--retrievals", type=names(ekv.RetrievalType),
                   default=[ekv.RetrievalType.LAYER, ekv.RetrievalType.KVHEAD])
    p.add_argument("--compressions", type=ints, default=[2, 4, 8, 16])
    p.add_argument("--init-blocks", type=int, default=1, help="sink blocks (ekv's default)")
    p.add_argument("--local-blocks", type=int, default=1, help="window blocks (ekv's default)")
    p.add_argument("--anchor-num", type=int, default=None, help="FIXED / DYNAMIC anchors per block (ekv's default)")
    p.add_argument("--importance-window", type=int, default=0, help="DYNAMIC: the prefill queries counted (0: all)")
    p.add_argument("--no-elastic", action="store_true", help="own and exact rows only")
    args = p.parse_args(argv)
    if args.cache_device is None:
        args.cache_device = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.elastic_device is None:
        args.elastic_device = args.cache_device
    args.batch = max(1, min(args.batch, args.samples))
    return args


def attention_mass(query, key, scaling, window, rows_per_chunk=256):
    """float32 [batch][kv_heads][tokens]: the softmax weight each key received from the
    last `window` queries (0: every query), summed over those queries and over the query
    heads of its GQA group (query head i reads kv head i // group, as transformers'
    repeat_kv). query [batch][q_heads][tokens][head_dim], key [batch][kv_heads][tokens]
    [head_dim], causal."""
    batch, q_heads, tokens, d = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    mass = torch.zeros(batch, kv_heads, tokens, device=key.device)
    first = 0 if window <= 0 else max(0, tokens - window)
    for b in range(batch):
        k = key[b].float()
        for r0 in range(first, tokens, rows_per_chunk):
            r1 = min(tokens, r0 + rows_per_chunk)
            q = query[b, :, r0:r1].float().view(kv_heads, group, r1 - r0, d)
            scores = torch.einsum("hgrd,htd->hgrt", q, k) * scaling
            future = torch.arange(tokens, device=key.device)[None, :] > torch.arange(r0, r1, device=key.device)[:, None]
            scores.masked_fill_(future, float("-inf"))
            mass[b] += torch.softmax(scores, -1).sum(dim=(1, 2))
    return mass


class EkvAttention:
    """transformers' attention function "ekv" (AttentionInterface): same arguments as
    sdpa_attention_forward (query [batch][q_heads][tokens][head_dim], key and value
    [batch][kv_heads][tokens][head_dim] after RoPE), returning ([batch][tokens][q_heads]
    [head_dim], None). mode "prefill": the model's own SDPA, keeping each layer's K and V
    as the cache takes them ([batch][tokens][kv_heads][head_dim], float16) and, where
    importance_window is set, the attention mass; mode "decode" (one token per sequence):
    appends the token's K and V to the first `batch` sequences of `cache` and returns
    cache.attn's output for them."""

    def __init__(self):
        self.mode, self.cache, self.step, self.pick = None, None, 0, -1
        self.init_blocks, self.local_blocks = 1, 1
        self.importance_window = None
        self.prefill, self.mass = {}, {}
        self.calls = self.exact_calls = 0

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = module.layer_idx
        if abs(scaling - query.shape[-1] ** -0.5) > 1e-9:
            raise ValueError(f"scaling={scaling}; ekv's attention scales scores by 1/sqrt(head_dim)")
        if self.mode == "prefill":
            out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                                            **kwargs)
            self.prefill[layer] = (key.transpose(1, 2).contiguous(), value.transpose(1, 2).contiguous())
            if self.importance_window is not None:
                self.mass[layer] = attention_mass(query, key, scaling, self.importance_window).cpu().numpy()
            return out, None
        if self.mode != "decode" or query.shape[2] != 1:
            raise RuntimeError(f"EkvAttention: mode {self.mode!r} with {query.shape[2]} query tokens")
        batch, heads, _, d = query.shape
        cache, on_gpu = self.cache, self.cache.device != "cpu"
        to_cache = (lambda t: t.contiguous()) if on_gpu else (lambda t: t.detach().cpu().contiguous().numpy())
        cache.append(layer, to_cache(key.transpose(1, 2)), to_cache(value.transpose(1, 2)))
        if on_gpu:
            out = torch.empty(batch, heads, d, dtype=torch.float16, device=query.device)
            lse = torch.empty(batch, heads, dtype=torch.float32, device=query.device)
        else:
            out, lse = np.empty((batch, heads, d), np.float16), np.empty((batch, heads), np.float32)
        cache.attn(to_cache(query[:, :, 0]), out, lse, layer, self.step, pick_block_num=self.pick,
                   init_block_num=self.init_blocks, local_block_num=self.local_blocks)
        self.calls += 1
        self.exact_calls += int(cache.last_attn_exact)
        out = out if on_gpu else torch.from_numpy(out).to(query.device)
        return out.view(batch, 1, heads, d), None


HOOK = EkvAttention()
SKIPPED = []  # rows not measured, and why
AttentionInterface.register("ekv", HOOK)


def prefill(model, hook, prompts, device, importance_window, on_cpu, batch=8):
    """Runs the prompts (int64 [n][prompt_len]) but their last token through the model with
    hook in prefill mode, `batch` at a time; returns each layer's (K, V) [n][prompt_len - 1]
    [kv_heads][head_dim] for the caches as torch tensors (and numpy arrays where on_cpu),
    and the attention mass float32 [layers][n][kv_heads][prompt_len - 1] (None unless
    importance_window is set)."""
    hook.mode, hook.importance_window = "prefill", importance_window
    model.set_attn_implementation("ekv")
    parts, masses = [], []
    for i in range(0, len(prompts), batch):
        hook.prefill, hook.mass = {}, {}
        ids = torch.as_tensor(prompts[i:i + batch, :-1]).to(device)
        with torch.no_grad():
            model.model(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=device).expand(len(ids), -1),
                        use_cache=False)
        parts.append([hook.prefill[layer] for layer in range(len(hook.prefill))])
        masses.append([hook.mass[layer] for layer in range(len(hook.mass))])
    layers = range(len(parts[0]))
    kv = {"torch": [tuple(torch.cat([p[layer][j] for p in parts]) for j in (0, 1)) for layer in layers]}
    if on_cpu:
        kv["numpy"] = [tuple(t.cpu().numpy() for t in pair) for pair in kv["torch"]]
    mass = None if importance_window is None else np.stack([np.concatenate([m[layer] for m in masses])
                                                            for layer in layers])
    hook.mode, hook.importance_window, hook.prefill, hook.mass = None, None, {}, {}
    return kv, mass


def set_importance(cache, mass, block_len):
    """Gives the blocks of the cache's first n sequences their tokens' importance, mass
    float32 [layers][n][kv_heads][tokens] (update_importance_one_block, one block at a time)."""
    layers, n, kv_heads, tokens = mass.shape
    blocks = -(-tokens // block_len)
    padded = np.zeros((layers, n, kv_heads, blocks * block_len), np.float32)
    padded[..., :tokens] = mass
    per_block = np.ascontiguousarray(padded.reshape(layers, n, kv_heads, blocks, block_len).transpose(0, 1, 3, 2, 4))
    table = cache.block_table()
    for layer in range(layers):
        for seq in range(n):
            for b in range(blocks):
                cache.update_importance_one_block(per_block[layer, seq, b], layer, int(table[seq, b]))


def ekv_decode(model, hook, cache, full, kv, mass, pick, args):
    """float32 [n][value_len][vocab]: the answers' logits for the sequences full int64 [n]
    [length] (prompt then answer), decoded with ekv attention over the first n sequences
    of the cache, refilled with their prefill (kv, mass: prefill()'s)."""
    device = torch.device(args.device)
    n, value_len = len(full), full.shape[1] - kv["torch"][0][0].shape[1] - 1
    for seq in range(n):
        cache.free_sequence(seq)
    for layer, (k, v) in enumerate(kv["torch" if cache.device != "cpu" else "numpy"]):
        cache.append(layer, k, v)
    if cache.config.anchor_type == ekv.AnchorType.DYNAMIC and pick >= 0:
        set_importance(cache, mass, args.block_len)
    first = full.shape[1] - value_len - 1  # the prompt's last token
    hook.mode, hook.cache, hook.pick = "decode", cache, pick
    hook.init_blocks, hook.local_blocks = args.init_blocks, args.local_blocks
    model.set_attn_implementation("ekv")
    tokens = torch.as_tensor(full).to(device)
    rows = []
    with torch.no_grad():
        for step in range(value_len):
            hook.step = step
            position = torch.full((n, 1), first + step, device=device)
            hidden = model.model(input_ids=tokens[:, first + step:first + step + 1], position_ids=position,
                                 use_cache=False).last_hidden_state
            rows.append(model.lm_head(hidden[:, -1]).float())
    hook.mode = None
    return torch.stack(rows, 1)


def budget(context, block_len, c, init, local):
    """(blocks, pick_block_num, blocks read per step) of the compression rule."""
    blocks = math.ceil(context / block_len)
    total = max(1, math.ceil(blocks / c))
    pick = max(0, total - init - local)
    return blocks, pick, min(blocks, init + local + pick)


def make_caches(args, model_config, devices, max_context):
    """{(device, kv_type, anchor, retrieval): KVCache}: one cache per anchor type and
    retrieval type, since both are config fields; exact rows use the first of a device and kv_type."""
    caches = {}
    for device in devices:
        elastic = device == args.elastic_device and not args.no_elastic
        anchors = args.anchors if elastic else args.anchors[:1]
        retrievals = args.retrievals if elastic else args.retrievals[:1]
        if elastic and device == "cpu" and ekv.AnchorType.DYNAMIC in anchors:
            anchors = [a for a in anchors if a != ekv.AnchorType.DYNAMIC]
            SKIPPED.append("DYNAMIC on cpu: the CPU backend's elastic decode takes QUEST, BLOCK_MEAN, BLOCK_MAX and "
                           "FIXED anchors only (--elastic-device cuda runs DYNAMIC on the GPU)")
        for kv_type in args.kv_types:
            for anchor in anchors:
                for retrieval in retrievals:
                    config = ekv.KVCacheConfig(
                        layer_num=model_config.num_hidden_layers, kv_head_num=model_config.num_key_value_heads,
                        q_head_num=model_config.num_attention_heads, head_dim=model_config.head_dim,
                        block_len=args.block_len, anchor_num=args.anchor_num, anchor_type=anchor, kv_type=kv_type,
                        retrieval_type=retrieval, max_batch_size=args.batch,
                        max_block_num=args.batch * (math.ceil(max_context / args.block_len) + 1),
                        max_thread_num=os.cpu_count() or 1)
                    caches[(device, kv_type, anchor, retrieval)] = ekv.KVCache(config, device=device)
    return caches


class Tally:
    """One row's results over samples: right and sample_nll per sample, in the order of
    the own row's kinds and depths."""

    def __init__(self, row):
        self.row, self.right, self.nll, self.kinds = row, [], [], []
        self.max_diff, self.same, self.seconds, self.calls, self.exact_calls = 0.0, [], 0.0, 0, 0

    def add(self, logits, sample, own=None):
        targets = torch.as_tensor(sample["answer"]).to(logits.device)
        greedy, nll = score(logits, targets)
        self.right.append(bool((greedy == targets).all()))
        self.nll.append(nll.mean().item())
        self.kinds.append(sample["kind"])
        if own is not None:
            self.max_diff = max(self.max_diff, (logits - own).abs().max().item())
            self.same.append(bool(torch.equal(greedy, own.argmax(-1))))

    def result(self):
        right = np.array(self.right)
        by_kind = {k: float(right[[x == k for x in self.kinds]].mean()) for k in sorted(set(self.kinds))}
        out = dict(self.row, samples=len(right), accuracy=float(right.mean()), accuracy_by_kind=by_kind,
                   nll=float(np.mean(self.nll)), seconds=self.seconds, right=self.right, sample_nll=self.nll)
        if self.same:
            out.update(max_abs_logit_diff_vs_own=self.max_diff, greedy_identical_share=float(np.mean(self.same)))
        if self.calls:
            out["exact_fallback_share"] = self.exact_calls / self.calls
        return out


def evaluate_context(model, task, caches, context, args):
    samples = task.eval_samples(args.seed, context, args.samples)
    start = time.perf_counter()
    model.set_attn_implementation("sdpa")
    own = own_attention_scores(model, samples)
    own_tally = Tally({"context": context, "attention": "own", "device": args.device, "kv_type": "-",
                       "kinds": [s["kind"] for s in samples], "depths": [s["depth"] for s in samples]})
    for i, s in enumerate(samples):
        own_tally.add(own[i], s)
    own_tally.seconds = time.perf_counter() - start
    tallies = {}
    jobs = []  # (key, cache, pick, row)
    for (device, kv_type, anchor, retrieval), cache in caches.items():
        blocks = math.ceil(context / args.block_len)
        common = {"context": context, "device": device, "kv_type": kv_type.name, "blocks": blocks}
        if not any(key == (device, kv_type, "exact") for key, _, _, _ in jobs):  # the first cache of each
            row = dict(common, attention="ekv exact", blocks_read=blocks)
            jobs.append(((device, kv_type, "exact"), cache, -1, row))
        if device != args.elastic_device or args.no_elastic:
            continue
        for c in args.compressions:
            blocks, pick, read = budget(context, args.block_len, c, args.init_blocks, args.local_blocks)
            row = dict(common, attention="ekv elastic", anchor=anchor.name, retrieval=retrieval.name, C=c,
                       pick_block_num=pick, init_block_num=args.init_blocks, local_block_num=args.local_blocks,
                       blocks_read=read)
            jobs.append(((device, kv_type, anchor, retrieval, c), cache, pick, row))
    dynamic = any(key[2] == ekv.AnchorType.DYNAMIC for key, _, pick, _ in jobs if pick >= 0)
    on_cpu = any(cache.device == "cpu" for _, cache, _, _ in jobs)
    for first in range(0, len(samples), args.batch):
        chunk = samples[first:first + args.batch]
        full = np.stack([np.concatenate([s["prompt"], s["answer"]]) for s in chunk])
        kv, mass = prefill(model, HOOK, full[:, :len(chunk[0]["prompt"])], torch.device(args.device),
                           args.importance_window if dynamic else None, on_cpu)
        for key, cache, pick, row in jobs:
            tally = tallies.setdefault(key, Tally(row))
            t0, calls, exact_calls = time.perf_counter(), HOOK.calls, HOOK.exact_calls
            logits = ekv_decode(model, HOOK, cache, full, kv, mass, pick, args)
            tally.seconds += time.perf_counter() - t0
            if pick >= 0:
                tally.calls += HOOK.calls - calls
                tally.exact_calls += HOOK.exact_calls - exact_calls
            for j, s in enumerate(chunk):
                tally.add(logits[j], s, own=own[first + j] if pick < 0 else None)
        print(f"  context {context}: {first + len(chunk)}/{len(samples)} samples, {time.perf_counter() - start:.0f} s",
              flush=True)
    return [own_tally.result()] + [t.result() for t in tallies.values()]


def table(rows):
    head = ["context", "attention", "device", "kv", "anchor", "retrieval", "C", "blocks read per step", "accuracy",
            "NLL"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        read = f"{r['blocks_read']} of {r['blocks']}" if "blocks" in r else "all"
        if r.get("exact_fallback_share"):
            read += f" (fell back to exact in {100 * r['exact_fallback_share']:.0f}% of calls)"
        cells = [r["context"], r["attention"], r["device"], r["kv_type"], r.get("anchor", "-"),
                 r.get("retrieval", "-"), r.get("C", "-"), read, f"{r['accuracy']:.3f}", f"{r['nll']:.4f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    meta = json.loads((pathlib.Path(args.checkpoint) / "task.json").read_text())
    task = retrieval_task.Task(**meta["task"])
    dtype = torch.float16
    model = LlamaForCausalLM.from_pretrained(args.checkpoint, dtype=dtype, attn_implementation="sdpa")
    model.to(args.device).eval()
    devices = [args.cache_device] + ([args.elastic_device] if args.elastic_device != args.cache_device
                                     and not args.no_elastic else [])
    caches = make_caches(args, model.config, devices, max(args.contexts))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(f"{args.checkpoint}: {meta['parameters'] / 1e6:.2f} M parameters, {model.config.num_hidden_layers} "
          f"layers; task {task}; model on {args.device} ({gpu or 'no GPU'}); exact cache on {args.cache_device}, "
          f"elastic caches on {args.elastic_device}; {len(caches)} caches", flush=True)
    print(f"compression rule: {RULE}", flush=True)
    rows = []
    for context in args.contexts:
        rows += evaluate_context(model, task, caches, context, args)
        exact = [r for r in rows if r["context"] == context and r["attention"] == "ekv exact"]
        for r in exact:
            print(f"context {context}, ekv exact on {r['device']} ({r['kv_type']}): max |logit - own| "
                  f"{r['max_abs_logit_diff_vs_own']:.4g}, argmax tokens identical to own in "
                  f"{100 * r['greedy_identical_share']:.1f}% of samples", flush=True)
    for cache in caches.values():
        cache.close()
    print()
    print(table(rows))
    for why in SKIPPED:
        print(f"\nskipped: {why}")
    fell_back = [r for r in rows if r.get("exact_fallback_share")]
    if fell_back:
        print(f"\n{len(fell_back)} elastic rows attended exactly in some calls (the GPU KVCache's exact fallback); "
              "a larger --batch, or --elastic-device cpu, measures elastic attention")
    if args.json:
        result = {"checkpoint": str(args.checkpoint), "task": meta["task"], "parameters": meta["parameters"],
                  "train": {k: meta["train"].get(k) for k in ("steps", "seconds", "eval")},
                  "rule": RULE, "command": [sys.executable] + sys.argv, "commit": commit(), "gpu": gpu,
                  "torch": torch.__version__, "transformers": transformers.__version__,
                  "args": {k: (v if not isinstance(v, list) else [getattr(x, "name", x) for x in v])
                           for k, v in vars(args).items()},
                  "rows": rows, "skipped": SKIPPED}
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
