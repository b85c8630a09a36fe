"""Trains a small GQA Llama (transformers' LlamaForCausalLM: 8 query heads, 2 KV heads,
head_dim 64, RoPE) on synthetic long-context retrieval (retrieval_task.py) within a time
budget, and saves it in float16 safetensors with its config (under 16 MiB).

    python3 examples/model/train_retrieval.py --out /tmp/ekv-model      # an H200: about 5 minutes

The loss sits only on the queries' answer tokens, so every gradient is about retrieval;
a context curriculum (default 512 -> 2048 -> 8192 tokens, shares of the budget 0.4, 0.3,
0.3) learns the copying at short contexts, where steps are cheap, then the positions of
long ones. Progress p is step / --steps where --steps is given, else elapsed time /
--time-budget-s; it picks the curriculum phase and the learning rate (linear warm-up, then
cosine to --min-lr-share of --lr). Training stops at p = 1 or at the time budget. Seeds
fix the initial weights and every batch (retrieval_task: a function of seed and step);
with --steps the schedule is fixed too, though GPU kernels need not be bit-reproducible.
bfloat16 autocast, SDPA attention, AdamW. At the end: retrieval accuracy (every answer
token the argmax; retrieval_task's eval samples) and answer NLL of the saved float16
model, with its own attention, at --eval-contexts."""
import argparse
import contextlib
import json
import math
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built from its config

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import retrieval_task  # noqa: E402
from scoring import answer_logits, own_attention_scores, score  # noqa: E402

MAX_CHECKPOINT_BYTES = 16 << 20  # the checkpoint is copied back from the GPU machine


def ints(text):
    return [int(x) for x in text.split(",") if x]


def floats(text):
    return [float(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="directory for model.safetensors, config.json, task.json")
    p.add_argument("--time-budget-s", type=float, default=280.0, help="training stops after this many seconds")
    p.add_argument("--steps", type=int, default=0, help="steps of the schedule (0: the time budget sets it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contexts", type=ints, default=[512, 2048, 8192], help="curriculum context lengths")
    p.add_argument("--batches", type=ints, default=[128, 32, 8], help="sequences per step, per phase")
    p.add_argument("--shares", type=floats, default=[0.4, 0.3, 0.3], help="share of the progress, per phase")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-share", type=float, default=0.1, help="the cosine ends at this share of --lr")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--rope-theta", type=float, default=100000.0)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--key-len", type=int, default=2)
    p.add_argument("--value-len", type=int, default=4)
    p.add_argument("--max-items", type=int, default=16)
    p.add_argument("--max-queries", type=int, default=8)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-contexts", type=ints, default=[2048, 4096, 8192])
    p.add_argument("--eval-samples", type=int, default=32, help="per context (0: no final evaluation)")
    p.add_argument("--eval-seed", type=int, default=1234, help="eval_retrieval.py's default too")
    args = p.parse_args(argv)
    if not (len(args.contexts) == len(args.batches) == len(args.shares)) or min(args.shares) <= 0:
        p.error("--contexts, --batches and --shares need one positive value per phase")
    return args


def build_model(args, task):
    config = LlamaConfig(vocab_size=task.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                         max_position_embeddings=max(args.contexts + args.eval_contexts),
                         rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
                         tie_word_embeddings=False, bos_token_id=retrieval_task.BOS, eos_token_id=None,
                         pad_token_id=retrieval_task.PAD)
    torch.manual_seed(args.seed)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa")


class Schedule:
    """Phase and learning rate from progress p in [0, 1]."""

    def __init__(self, args):
        self.args = args
        total = sum(args.shares)
        self.ends = np.cumsum(args.shares) / total

    def phase(self, p):
        return min(int(np.searchsorted(self.ends, p, side="right")), len(self.ends) - 1)

    def lr(self, p, step):
        a = self.args
        warm = min(1.0, (step + 1) / max(1, a.warmup_steps))
        return a.lr * warm * (a.min_lr_share + (1 - a.min_lr_share) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train(args, task, model):
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95),
                                  **({"fused": True} if cuda else {}))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    schedule = Schedule(args)
    start = time.perf_counter()
    step, phase, log = 0, -1, None
    history = []
    while True:
        elapsed = time.perf_counter() - start
        p = step / args.steps if args.steps else elapsed / args.time_budget_s
        if p >= 1.0 or elapsed >= args.time_budget_s:
            break
        if schedule.phase(p) != phase:
            phase = schedule.phase(p)
            context, batch = args.contexts[phase], args.batches[phase]
            print(f"phase {phase}: context {context}, batch {batch}, from step {step} ({elapsed:.0f} s)", flush=True)
        lr = schedule.lr(p, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens, answers, mask = (torch.from_numpy(a).to(device)
                                 for a in task.training_batch(args.seed, step, batch, context))
        with autocast:
            logits = answer_logits(model, tokens, answers)
        targets = tokens.gather(1, answers)
        token_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (token_loss * mask.flatten()).sum() / mask.sum()  # the answer tokens' mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            right = (logits.argmax(-1) == targets) | ~mask
            queries = mask.view(batch, task.max_queries, task.value_len)[:, :, 0]
            whole = right.view(batch, task.max_queries, task.value_len).all(-1)
            sums = torch.stack([x.double() for x in (loss.detach() * mask.sum(), (right & mask).sum(), mask.sum(),
                                                     (whole & queries).sum(), queries.sum())])
        log = sums if log is None else log + sums
        step += 1
        if step % args.log_every == 0:
            loss_sum, right_tokens, n_tokens, right_queries, n_queries = log.tolist()
            now = time.perf_counter()
            seconds = now - start - (history[-1]["elapsed_s"] if history else 0.0)
            rate = args.log_every * batch * context / seconds  # approximate across a phase change
            row = {"step": step, "context": context, "loss": loss_sum / n_tokens, "token_acc": right_tokens / n_tokens,
                   "answer_acc": right_queries / n_queries, "tokens_per_s": rate, "lr": lr, "elapsed_s": now - start}
            history.append(row)
            print(f"step {step:5d}  ctx {context:5d}  loss {row['loss']:.4f}  token acc {row['token_acc']:.3f}  "
                  f"answer acc {row['answer_acc']:.3f}  {rate:,.0f} tok/s  lr {lr:.2e}  {now - start:.0f} s",
                  flush=True)
            log = None
    seconds = time.perf_counter() - start
    print(f"trained {step} steps in {seconds:.1f} s", flush=True)
    return {"steps": step, "seconds": seconds, "history": history}


def save(args, task, model, summary):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).eval()
    model.save_pretrained(out)
    meta = {"task": task.to_dict(), "train_args": {k: v for k, v in vars(args).items()}, "train": summary,
            "parameters": sum(p.numel() for p in model.parameters())}
    (out / "task.json").write_text(json.dumps(meta, indent=1))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"saved {out}: {meta['parameters'] / 1e6:.2f} M parameters, {size / 2**20:.2f} MiB", flush=True)
    if size > MAX_CHECKPOINT_BYTES:
        raise SystemExit(f"checkpoint is {size} bytes, over the {MAX_CHECKPOINT_BYTES}-byte limit: fewer or "
                         "narrower layers (--layers, --hidden, --intermediate)")


def final_eval(args, task, model):
    results = []
    for context in args.eval_contexts:
        samples = task.eval_samples(args.eval_seed, context, args.eval_samples)
        logits = own_attention_scores(model, samples)
        targets = torch.stack([torch.as_tensor(s["answer"]) for s in samples]).to(logits.device)
        greedy, nll = score(logits, targets)
        right = (greedy == targets).all(-1).float()
        results.append({"context": context, "accuracy": right.mean().item(), "nll": nll.mean().item()})
        print(f"own attention, context {context}: accuracy {results[-1]['accuracy']:.3f} "
              f"({args.eval_samples} samples), answer NLL {results[-1]['nll']:.4f}", flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    task = retrieval_task.Task(vocab_size=args.vocab, key_len=args.key_len, value_len=args.value_len,
                               max_items=args.max_items, max_queries=args.max_queries)
    for context in args.contexts + args.eval_contexts:
        if context < task.min_length():
            raise SystemExit(f"context {context} is shorter than the task's {task.min_length()} tokens")
    model = build_model(args, task)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {args.layers} layers, hidden "
          f"{args.hidden}, 8 query / 2 kv heads of 64; task {task}; device {args.device}", flush=True)
    summary = train(args, task, model)
    save(args, task, model, summary)
    if args.eval_samples > 0:
        summary["eval"] = final_eval(args, task, model)
        meta_path = pathlib.Path(args.out) / "task.json"
        meta = json.loads(meta_path.read_text())
        meta["train"] = summary
        meta_path.write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    sys.exit(main())
