"""ekv's KVCache as PyTorch operations on torch CUDA tensors, ordered on torch's current
stream: append, and exact or elastic attention that a CUDA graph may capture after a
warm-up call (torch.cuda.graph). Built on the Python package `ekv` (examples/python/, over
libekv_c: no extension to compile); its _on_stream calls queue the work on the stream torch
is using and return without waiting.

    import torch, ekv
    from ekv_torch import EkvAttention
    attention = EkvAttention(ekv.KVCacheConfig(layer_num=1, kv_head_num=8, q_head_num=32, head_dim=128,
                                               kv_type=ekv.GGMLType.FP16, max_block_num=4096))
    attention.append(0, k, v)                   # k, v: [batch, tokens, kv_heads, head_dim] float16, cuda
    out, lse = attention.attn(q, 0, step)       # q: [batch, q_heads, head_dim]; exact
    out, lse = attention.attn(q, 0, step, pick_block_num=64)  # elastic: 1 sink, 1 window, 64 by score

Capturing: run attn once at the batch, length (rounded up to a power of two, from 4,096)
and budget the graph will replay with, then capture it with static q, out and lse
(attn(..., out=, lse=)); appends stay outside the graph (they take blocks on the host) and
a replay attends the tokens they added."""
import torch

import ekv


class EkvAttention:
    """One ekv.KVCache on a CUDA device, driven with torch tensors on torch's current stream."""

    def __init__(self, config, device="cuda"):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"device is {device}; supported: a CUDA device (ekv.KVCache(config) is the CPU backend)")
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        self.cache = ekv.KVCache(config, device=str(self.device))
        self.config = self.cache.config

    def append(self, layer_idx, k_new, v_new):
        """Appends k_new, v_new [batch, new_tokens, kv_head_num, head_dim] to the first batch sequences."""
        self.cache.append(layer_idx, k_new.contiguous(), v_new.contiguous(), stream=torch.cuda.current_stream())

    def attn(self, q, layer_idx, generate_token_idx, pick_block_num=None, init_block_num=None,
             local_block_num=None, out=None, lse=None):
        """(out, lse) of one layer's decode attention for q [batch, q_head_num, head_dim]:
        exact without pick_block_num, else elastic. out and lse (float32 [batch, q_head_num])
        are allocated unless given (a captured graph needs them static)."""
        if out is None:
            out = torch.empty_like(q)
        if lse is None:
            lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
        self.cache.attn(q.contiguous(), out, lse, layer_idx, generate_token_idx, pick_block_num=pick_block_num,
                        init_block_num=init_block_num, local_block_num=local_block_num,
                        stream=torch.cuda.current_stream())
        return out, lse

    @property
    def last_attn_exact(self):
        """Whether the last attn attended every block (asked to, or the budget could not pay)."""
        return self.cache.last_attn_exact
