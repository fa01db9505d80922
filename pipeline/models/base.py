"""MemoryLM: the shared decoder plus one memory that decides how a long input is read.

Reading order. A document of N tokens is cut into S segments of W tokens (the last one padded;
padding sits after every real token, so causal attention never lets it leak). The segments are
processed in *chunks* of C consecutive segments, layer by layer: block l runs on all C segments
at once as a batch of B*C windows. Every memory here is causal across segments (segment s only
uses state built from segments < s), so processing a chunk layer by layer gives exactly the
same result as the textbook segment-by-segment loop (chunk = 1 segment), only with far fewer,
larger tensor ops. By default the whole document is one chunk; `chunk_segments=1` gives the
streaming loop (tests check that both agree), and a memory may force it (cmr in flat mode when
a reweave layer reads a bank captured at the same or a deeper layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.models.transformer import Block, Rotary, init_weights


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, N, V]
    diagnostics: dict = field(default_factory=dict)


@dataclass
class Step:
    """What a memory needs to know about the chunk being processed."""

    B: int  # documents
    N: int  # real tokens per document
    S: int  # segments in the document
    T: int  # tokens per segment (W, or N when N <= W / for full)
    c0: int  # global index of the chunk's first segment
    C: int  # segments in this chunk
    bptt: int  # segments gradients may flow back through memory
    return_attention: bool
    attention: dict = field(default_factory=dict)  # layer -> dict of per-chunk lists

    @property
    def last_chunk(self) -> bool:
        return self.c0 + self.C >= self.S

    def record(self, layer: int, key: str, value: Any, per_query: bool = True) -> None:
        """Attention diagnostics. per_query tensors are [B, C, T, ...] (key_pos, the same for every
        document: [C, T, ...]); anything else is stored once."""
        rec = self.attention.setdefault(layer, {})
        if per_query:
            rec.setdefault(key, []).append(value)
        else:
            rec.setdefault(key, value)


class Memory(nn.Module):
    """Base memory: reads each segment alone (this *is* the `window` variant). A memory's module sets `Config`,
    its config dataclass (pipeline/models/registry.py)."""

    Config = MemoryConfig

    def __init__(self, backbone: BackboneConfig, cfg: MemoryConfig):
        super().__init__()
        self.backbone, self.cfg = backbone, cfg
        self.whole_sequence = cfg.whole_sequence  # full: one segment of N tokens

    def chunk_segments(self, requested: Optional[int], S: int) -> int:
        return S if requested is None else max(1, min(requested, S))

    def new_state(self) -> dict:
        """Fresh memory state for one forward call (so memory resets between batches of documents)."""
        return {}

    def layer(self, l: int, block: Block, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        """Run block l on h [B*C, T, D] (plus whatever this memory adds)."""
        h, probs = block(h, return_probs=step.return_attention)
        if probs is not None:
            record_self_attention(step, l, probs, self.key_positions(step, probs.shape[-1], 0), 0)
        return h

    def end_chunk(self, state: dict, step: Step) -> None:
        """Carry state to the next chunk."""

    def diagnostics(self, state: dict, step: Step) -> dict:
        return {}

    def memory_floats(self) -> int:
        return 0

    @staticmethod
    def key_positions(step: Step, Tk: int, n_mem: int) -> torch.Tensor:
        """Document position of every key column for each query segment of the chunk: [C, Tk]
        (-1 where the column is padding or before the document start). Columns [0, n_mem) are memory."""
        seg = torch.arange(step.c0, step.c0 + step.C)[:, None]
        pos = seg * step.T - n_mem + torch.arange(Tk)[None, :]
        return pos.masked_fill((pos < 0) | (pos >= step.N), -1)


class MemoryLM(nn.Module):
    """Token embedding -> blocks (with a memory plugged in) -> final LN -> LM head."""

    def __init__(self, backbone: BackboneConfig, memory: Memory, vocab_size: int):
        super().__init__()
        b = backbone
        self.backbone_cfg, self.memory_cfg, self.vocab_size = b, memory.cfg, vocab_size
        self.name = memory.cfg.name
        self.tok_emb = nn.Embedding(vocab_size, b.d_model)
        rotary = Rotary(b.d_model // b.n_heads, b.rope_base) if b.positions == "rotary" else None
        n_pos = b.max_positions if memory.whole_sequence else b.window  # segment-relative unless full
        self.pos_emb = nn.Embedding(n_pos, b.d_model) if b.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(b.d_model, b.n_heads, b.d_ff, b.dropout, rotary, b.conv_kernel)
                                    for _ in range(b.n_layers))
        self.ln_f = nn.LayerNorm(b.d_model)
        self.head = nn.Linear(b.d_model, vocab_size, bias=False)
        init_weights(self, b.n_layers)
        if b.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        self.memory = memory  # after init_weights: memories initialise their own parameters, so
        if hasattr(memory, "reset_parameters"):  # the same seed gives every variant the same backbone
            memory.reset_parameters()

    def num_parameters(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def memory_floats(self) -> int:
        """Floats of memory state at capacity (xl: n_layers*mem_len*d_model; cmr: banks*K*d_mem)."""
        return self.memory.memory_floats()

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        return_attention: bool = False,
        bptt_segments: Optional[int] = None,
        chunk_segments: Optional[int] = None,
        logits_at: Optional[torch.Tensor] = None,
    ) -> ModelOutput:
        """logits_at: [B, Q] positions (-1: padding, gives position 0's logits): logits only there,
        [B, Q, V] instead of [B, N, V] (the answer loss needs only the query positions, and the LM
        head over every token is a third of a small model's training FLOPs)."""
        B, N = input_ids.shape  # input_ids: [B, N]
        b = self.backbone_cfg
        if self.memory.whole_sequence and b.positions == "learned" and N > b.max_positions:
            raise ConfigError(f"input of {N} tokens exceeds backbone.max_positions = {b.max_positions} for `full`")
        T = N if (self.memory.whole_sequence or N <= b.window) else b.window
        S = math.ceil(N / T)
        x = self.tok_emb(input_ids)  # [B, N, D]
        if S * T > N:
            x = F.pad(x, (0, 0, 0, S * T - N))
        x = x.view(B, S, T, -1)  # [B, S, T, D]
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[:T]
        x = F.dropout(x, b.dropout, self.training)
        bptt = getattr(self.memory_cfg, "bptt_segments", 0) if bptt_segments is None else bptt_segments

        state = self.memory.new_state()
        C = self.memory.chunk_segments(chunk_segments, S)
        outs, step = [], None
        for c0 in range(0, S, C):
            step = Step(B, N, S, T, c0, min(C, S - c0), bptt, return_attention, step.attention if step else {})
            h = x[:, c0 : c0 + step.C].reshape(B * step.C, T, -1)  # [B*C, T, D]
            for l, block in enumerate(self.blocks):
                h = self.memory.layer(l, block, h, state, step)
            self.memory.end_chunk(state, step)
            outs.append(h.view(B, step.C, T, -1))
        h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        h = h.reshape(B, S * T, -1)[:, :N]  # [B, N, D]
        if logits_at is not None:
            idx = logits_at.clamp(min=0).unsqueeze(-1).expand(-1, -1, h.size(-1))  # [B, Q, D]
            h = h.gather(1, idx)  # [B, Q, D]
        logits = self.head(self.ln_f(h))  # [B, N, V] (or [B, Q, V])

        diag = self.memory.diagnostics(state, step)
        if return_attention:
            diag["attention"] = self._collect_attention(step, B, S, T, N)
        return ModelOutput(logits=logits, diagnostics=diag)

    def _collect_attention(self, step: Step, B: int, S: int, T: int, N: int) -> list[dict]:
        """Per layer, with a query axis of N document positions:

        self:           [B, N, H, Tk] self-attention probabilities over the columns the query's
                        segment can see (padding/causally hidden columns have probability 0)
        key_pos:        [N, Tk] document position of each column (-1: nothing there)
        memory_columns: leading columns of `self` that are memory (xl's cache), else 0
        cmr reweave layers also: memory [B, N, H, n_slots] (cross-attention over bank slots),
        slot_pos [B, N, n_slots] (document position each slot was captured from, -1: empty slot),
        slot_layer [n_slots] (source capture layer), gate [B, N] (mean gate per token).
        """
        layers = []
        for l in range(len(self.blocks)):
            out = {}
            for key, val in step.attention.get(l, {}).items():
                if not isinstance(val, list):
                    out[key] = val
                    continue
                batched = key != "key_pos"
                t = torch.cat(val, dim=1 if batched else 0)
                if batched:
                    out[key] = t.reshape(B, S * T, *t.shape[3:])[:, :N]
                else:
                    out[key] = t.reshape(S * T, *t.shape[2:])[:N]
            layers.append(out)
        return layers


def record_self_attention(step: Step, l: int, probs: torch.Tensor, key_pos: torch.Tensor, n_mem: int) -> None:
    """probs: [B*C, H, T, Tk]; key_pos: [C, Tk]."""
    B, C, T = step.B, step.C, step.T
    step.record(l, "self", probs.view(B, C, *probs.shape[1:]).transpose(2, 3))  # [B, C, T, H, Tk]
    step.record(l, "key_pos", key_pos[:, None, :].expand(C, T, key_pos.shape[-1]))  # [C, T, Tk]
    step.record(l, "memory_columns", n_mem, per_query=False)
