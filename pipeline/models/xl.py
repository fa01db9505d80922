"""`xl` (Transformer-XL, Dai et al. 2019): each layer also attends to the cached states of the
previous mem_len tokens, with no gradient through the cache.

The cache of layer l at segment s holds the layer-l *inputs* of the mem_len tokens before the
segment (they were computed with their own caches, so the reach grows with depth). We cache their
keys/values (same thing, projected once). Positions are rotary over the window [cache; segment],
so relative offsets are consistent and independent of N.
"""

from __future__ import annotations

import torch

from dataclasses import dataclass

from pipeline.config.checks import int_at_least
from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.models.base import Memory, Step, record_self_attention


@dataclass
class XLConfig(MemoryConfig):
    """Transformer-XL: each layer also attends to the detached states of the previous mem_len tokens."""

    name: str = "xl"
    mem_len: int = 16  # memory floats n_layers*mem_len*d_model = cmr's banks*capacity*d_mem at defaults

    def check(self, backbone: BackboneConfig) -> None:
        int_at_least("models.xl.mem_len", self.mem_len, 1)


class XLMemory(Memory):
    Config = XLConfig
    cfg: XLConfig

    def memory_floats(self) -> int:
        return self.backbone.n_layers * self.cfg.mem_len * self.backbone.d_model

    def new_state(self) -> dict:
        return {}  # layer -> (k, v) of the last mem_len tokens, each [B, H, M, hd]

    def layer(self, l: int, block, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        M, B, C, T = self.cfg.mem_len, step.B, step.C, step.T

        def context(xn, k, v):  # k, v: [B*C, H, T, hd] of the chunk's own tokens (unrotated)
            if torch.is_grad_enabled():  # the cache carries no gradient into earlier states
                kc, vc = block.attn.project_kv(xn.detach())
            else:
                kc, vc = k, v
            H, hd = kc.shape[1], kc.shape[3]
            if M == T:  # (the default) segment c's cache is segment c-1's keys: a shift, no unfold and no copies
                ext = []
                for t, cur, name in ((kc, k, "k"), (vc, v, "v")):
                    t5 = t.view(B, C, H, T, hd)
                    prev = state.get((l, name))
                    prev = t.new_zeros(B, 1, H, M, hd) if prev is None else prev[:, None]
                    if not step.last_chunk:
                        state[(l, name)] = t5[:, -1]
                    cache = torch.cat([prev, t5[:, : C - 1]], dim=1).reshape(B * C, H, M, hd)
                    ext.append(torch.cat([cache, cur], dim=2))  # [B*C, H, M+T, hd]
                return ext[0], ext[1], self._mask(step, h.device)
            # the chunk's tokens in document order, preceded by the previous chunk's cache: [B, H, M + C*T, hd]
            seq = []
            for t, name in ((kc, "k"), (vc, "v")):
                t = t.view(B, C, H, T, hd).transpose(1, 2).reshape(B, H, C * T, hd)
                prev = state.get((l, name))
                if prev is None:
                    prev = t.new_zeros(B, H, M, hd)  # before the document: masked out below
                seq.append(torch.cat([prev, t], dim=2))
            if not step.last_chunk:
                state[(l, "k")], state[(l, "v")] = seq[0][:, :, -M:], seq[1][:, :, -M:]
            # segment c's cache = seq[c*T : c*T + M]: [B, H, C, hd, M] -> [B*C, H, M, hd]
            ext = []
            for s, cur in zip(seq, (k, v)):
                cache = s.unfold(2, M, T)[:, :, :C].permute(0, 2, 1, 4, 3).reshape(B * C, H, M, hd)
                ext.append(torch.cat([cache, cur], dim=2))  # [B*C, H, M+T, hd]
            return ext[0], ext[1], self._mask(step, h.device)

        h, probs = block(h, context=context, return_probs=step.return_attention)
        if probs is not None:
            record_self_attention(step, l, probs, self.key_positions(step, M + T, M), M)
        return h

    def _mask(self, step: Step, device) -> torch.Tensor:
        """bool [B*C, 1, T, M+T]: causal inside the segment, cache columns before the document hidden."""
        M, T, C = self.cfg.mem_len, step.T, step.C
        causal = torch.ones(T, M + T, dtype=torch.bool, device=device).tril(M)
        seg = torch.arange(step.c0, step.c0 + C, device=device)[:, None]
        exists = (seg * T - M + torch.arange(M + T, device=device)[None, :]) >= 0  # [C, M+T]
        mask = causal[None] & exists[:, None, :]  # [C, T, M+T]
        return mask[None, :, None].expand(step.B, C, 1, T, M + T).reshape(step.B * C, 1, T, M + T)


MEMORY = XLMemory
