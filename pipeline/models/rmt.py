"""`rmt` (Recurrent Memory Transformer, Bulatov et al. 2022): m memory tokens carry the state.

Each segment is read as [read memory (m); segment (T); write memory (m)] through every block
with one causal attention: the segment's tokens see the read memory before them, the write
tokens see the whole segment, and the write tokens' last-layer outputs are the next segment's
read memory (the first segment reads a learned initial memory). The write tokens of a segment
come after its tokens, so a segment never sees its own writes: causal across segments.

BPTT (RMT's truncation): the memory handed from segment s-1 to s carries gradient iff
s >= S - bptt_segments, i.e. gradients flow back through the document's last bptt_segments
transitions (all of them when bptt_segments >= S - 1; 0: always detached).
Attention diagnostics record the segment columns ("self", summing to 1 - memory_mass) and "memory_mass".
The state is m * d_model floats. There is no "memory off" setting: the memory tokens always
share the segment's attention, so `rmt` never equals `window` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from pipeline.config.checks import int_at_least
from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.models.base import Memory, Step, record_self_attention


@dataclass
class RMTConfig(MemoryConfig):
    """Recurrent Memory Transformer (Bulatov et al. 2022): mem_tokens read at a segment's start, written at its end."""

    name: str = "rmt"
    # m: state m*d_model floats (8*64 = 512 at the default width, a quarter of cmr's banks; 32 matches them at 5x
    # the tokens per segment); RMT's small recall recipe used 4
    mem_tokens: int = 8
    bptt_segments: int = 6  # memory transitions gradients flow back through (0: detached); conf/: cmr's depth
    # its own recipe (docs/MEMORIES.md, "rmt"): the segment count steps 2 -> 4 -> 6, 1,000 steps per stage (RMT's
    # authors grow it stage by stage), no long pool, 6,000 steps, the checkpoint chosen on far recall at its training
    # length (its val_long far recall stays near chance), and a plateau patience of 2 (its far recall dips and rises)
    recipe: Dict[str, Any] = field(default_factory=lambda: {
        "max_steps": 6000, "monitor": "val/recall_far", "stop_patience": 2,
        "curriculum": [{"until_step": 1000, "max_segments": 2}, {"until_step": 2000, "max_segments": 4},
                       {"until_step": None, "max_segments": 6}]})
    spans_document = True

    def check(self, backbone: BackboneConfig) -> None:
        int_at_least("models.rmt.mem_tokens", self.mem_tokens, 1)
        int_at_least("models.rmt.bptt_segments", self.bptt_segments, 0)


class RMTMemory(Memory):
    Config = RMTConfig
    cfg: RMTConfig

    def __init__(self, backbone: BackboneConfig, cfg: RMTConfig):
        super().__init__(backbone, cfg)
        self.init_memory = nn.Parameter(torch.zeros(cfg.mem_tokens, backbone.d_model))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.init_memory, 0.0, 0.02)  # the embeddings' scale

    def memory_floats(self) -> int:
        return self.cfg.mem_tokens * self.backbone.d_model

    def chunk_segments(self, requested: Optional[int], S: int) -> int:
        return 1  # segment s reads what segment s-1 wrote at the last layer: one segment at a time

    def new_state(self) -> dict:
        return {"memory": None}  # [B, m, D]: the read memory of the next segment

    def layer(self, l: int, block, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        m, T = self.cfg.mem_tokens, step.T
        if l == 0:
            mem = state["memory"]
            if mem is None:
                mem = self.init_memory.expand(h.shape[0], -1, -1)
            h = torch.cat([mem, h, mem], dim=1)  # [B, m + T + m, D]
        h, probs = block(h, return_probs=step.return_attention)
        if probs is not None:  # the segment's queries over its own columns (the mass they give the read
            seg = probs[:, :, m : m + T]  # [B, H, T, 2m + T]        memory, which has no position: memory_mass)
            record_self_attention(step, l, seg[..., m : m + T], self.key_positions(step, T, 0), 0)
            step.record(l, "memory_mass", seg[..., :m].sum(-1).transpose(1, 2).reshape(step.B, 1, T, -1))
        if l == self.backbone.n_layers - 1:
            _, h, new = h.split([m, T, m], dim=1)  # one split: its backward is one cat, two slices' two zero-fills
            if not step.last_chunk:
                keep_grad = step.c0 + 1 >= step.S - self.cfg.bptt_segments
                state["memory"] = new if keep_grad else new.detach()
        return h


MEMORY = RMTMemory
