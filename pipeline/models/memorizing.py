"""`memorizing` (Memorizing Transformer, Wu et al. 2022): one layer retrieves from a store of the past.

At the retrieval layer (default: the midpoint, as the authors' code), each query attends twice: to its own segment
(causal, rotary, as every block does) and to the top_k (key, value) pairs, by dot product, of a
store holding that layer's keys and values of the `store` tokens before the segment (a bounded
FIFO: this bound is the memory budget, store * 2 * d_model floats). The two results are mixed per
head by a learned gate, y = g * memory + (1 - g) * local, g = sigmoid(gate_h). Stored keys and
values are detached (no gradient into the past, as in the paper) and unrotated (the memory carries
no positions). A segment with nothing stored before it uses the local result alone; a gate logit
of -inf gives exactly `window`. Exact top-k (no approximate nearest neighbours at this size).

The store a segment reads is the `store` tokens just before it, so chunks are processed like `xl`:
[previous chunk's last `store` keys; this chunk's keys], one window per segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.checks import int_at_least
from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.errors import ConfigError
from pipeline.models.base import Memory, Step, record_self_attention
from pipeline.models.transformer import apply_rotary


@dataclass
class MemorizingConfig(MemoryConfig):
    """Memorizing Transformer (Wu et al. 2022): one layer also attends to the top-k of a store of past keys/values."""

    name: str = "memorizing"
    # the retrieval layer; null: the midpoint, block n_layers // 2 - 1 (lucidrains' default; the first of our 2).
    # Retrieving at the last block, far recall on val stayed at 0.45 (keys are mixed states, and the store is
    # detached, so W_k never learns to make them retrievable); at block 0 a value's key carries its entity through
    # the short convolution: 1.00 (docs/MEMORIES.md)
    layer: Optional[int] = None
    # the bound: the (key, value) pairs of the last `store` tokens before a segment (16 segments back); state
    # store*2*d_model floats = 32,768 at the default width (16x cmr's banks: a retrieval memory is meant to be large)
    store: int = 256
    top_k: int = 8  # retrieved pairs per query and head
    spans_document = True

    def check(self, backbone: BackboneConfig) -> None:
        int_at_least("models.memorizing.top_k", self.top_k, 1)
        if not isinstance(self.store, int) or self.store < self.top_k:
            raise ConfigError(f"models.memorizing.store = {self.store!r} must be an integer >= "
                              f"models.memorizing.top_k = {self.top_k}")
        n = backbone.n_layers
        if self.layer is not None and (not isinstance(self.layer, int) or not 0 <= self.layer < n):
            raise ConfigError(f"models.memorizing.layer = {self.layer!r} must be null or in [0, {n - 1}]")


class MemorizingMemory(Memory):
    Config = MemorizingConfig
    cfg: MemorizingConfig

    def __init__(self, backbone: BackboneConfig, cfg: MemorizingConfig):
        super().__init__(backbone, cfg)
        self.retrieval_layer = max(0, backbone.n_layers // 2 - 1) if cfg.layer is None else cfg.layer
        self.gate = nn.Parameter(torch.zeros(backbone.n_heads))  # per-head logit: g = 0.5 at the start

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gate)

    def memory_floats(self) -> int:
        return self.cfg.store * 2 * self.backbone.d_model

    def new_state(self) -> dict:
        return {}  # "k", "v": [B, H, M, hd] of the last `store` tokens before the next chunk

    def layer(self, l: int, block, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        if l != self.retrieval_layer:
            return super().layer(l, block, h, state, step)
        xn = block.ln1(h)
        if block.conv is not None:
            xn = block.conv(xn)
        a, probs = self._attend(block.attn, xn, state, step)
        if probs is not None:
            record_self_attention(step, l, probs, self.key_positions(step, step.T, 0), 0)
        h = h + a
        return h + F.dropout(block.out(F.gelu(block.fc(block.ln2(h)))), block.dropout, block.training)

    def _attend(self, attn, xn: torch.Tensor, state: dict, step: Step):
        Bc, T, D = xn.shape
        H, hd = attn.n_heads, attn.head_dim
        q, k, v = attn.qkv(xn).view(Bc, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # [B*C, H, T, hd] each
        qr, kr = (apply_rotary(t, attn.rotary.tables(T, xn.device)) for t in (q, k)) if attn.rotary else (q, k)
        p = attn.dropout if attn.training else 0.0
        probs = None
        if step.return_attention:
            causal = torch.ones(T, T, dtype=torch.bool, device=xn.device).tril()
            probs = ((qr @ kr.transpose(-2, -1)) * hd**-0.5).masked_fill(~causal, float("-inf")).softmax(-1)
            local = probs @ v
        else:
            local = F.scaled_dot_product_attention(qr, kr, v, dropout_p=p, is_causal=True)
        mem, has = self._retrieve(q, k.detach(), v.detach(), state, step)  # [B*C, H, T, hd], [B*C]
        g = torch.sigmoid(self.gate)[None, :, None, None] * has[:, None, None, None]
        y = (local + g * (mem - local)).transpose(1, 2).reshape(Bc, T, D)
        return F.dropout(attn.proj(y), p, attn.training), probs

    def _retrieve(self, q, k, v, state: dict, step: Step):
        """Top-k attention of each query over the `store` tokens before its segment."""
        M, B, C, T = self.cfg.store, step.B, step.C, step.T
        H, hd = q.shape[1], q.shape[3]
        seq = []
        for t, name in ((k, "k"), (v, "v")):  # document order, after the previous chunk's store
            t = t.view(B, C, H, T, hd).transpose(1, 2).reshape(B, H, C * T, hd)
            prev = state.get(name)
            if prev is None:
                prev = t.new_zeros(B, H, M, hd)  # before the document: masked out below
            seq.append(torch.cat([prev, t], dim=2))
        if not step.last_chunk:
            state["k"], state["v"] = seq[0][:, :, -M:], seq[1][:, :, -M:]
        # segment c's store = seq[c*T : c*T + M] -> [B*C, H, M, hd]
        ks, vs = (s.unfold(2, M, T)[:, :, :C].permute(0, 2, 1, 4, 3).reshape(B * C, H, M, hd) for s in seq)
        seg = torch.arange(step.c0, step.c0 + C, device=q.device)[:, None]
        exists = (seg * T - M + torch.arange(M, device=q.device)[None, :]) >= 0  # [C, M]
        exists = exists[None].expand(B, C, M).reshape(B * C, 1, 1, M)
        with torch.no_grad():  # which k store tokens each query reads: chosen on the whole [B*C, H, T, M] score
            score = (q @ ks.transpose(-2, -1)).masked_fill(~exists, float("-inf"))
            idx = score.topk(min(self.cfg.top_k, M), dim=-1).indices  # [B*C, H, T, k]
        # ... and only their k scores computed again with gradient (the dense score's backward was ~8% of a step)
        gather = lambda s: s.unsqueeze(2).expand(-1, -1, T, -1, -1).gather(3, idx[..., None].expand(*idx.shape, hd))  # noqa: E731
        top = (gather(ks) @ q[..., None]).squeeze(-1) * hd**-0.5  # [B*C, H, T, k]
        # finite: a segment with no store gets `has` = 0 instead of NaNs
        top = top.masked_fill(~exists.expand(-1, H, T, -1).gather(3, idx), -1e9)
        mem = (top.softmax(-1)[..., None] * gather(vs)).sum(-2)  # [B*C, H, T, hd]
        return mem, exists.reshape(B * C, M).any(-1).to(q.dtype)


MEMORY = MemorizingMemory
