"""`cmr`: Contextual Memory Reweaving, made concrete (METHOD.md section 2).

Capture (after block l, for l in capture_layers): salience a = sigmoid(z), z = w_l . LN(u) + b_l per
token (LN without affine: its scale/shift fold into w_l, b_l), where u is what the scorer reads
(`score_input`): the token as block l's attention receives it, i.e. with its short-convolution context
of the kernel-1 tokens before it (default); the token alone as it enters block l; or block l's output h.
The top-k tokens of each segment by the selection score (learned: z; norm: |h|; random; recent:
position) are written to bank l as a * P_l(h) in R^{d_mem}. Why not the output: a scorer that reads h
ranks a token by what attention mixed into it, and in training (no bank overflows) nothing teaches it
to rank a fact above filler that attended to one; its ranking drifted and long-document recall rose
and fell. Why not the token alone: at layer 0 that is the embedding, so every copy of a token scores
the same; a seed that learned to keep the '.' closing each fact (its state holds the whole fact) then
kept every filler '.' as well, and on long documents the banks filled with them (docs/RECIPE.md, "The
scorer's short-convolution context"). The local context tells the two apart. Exact ties (copies of one token in
the same context) are broken by torch.topk.
The same score decides eviction: a bank holds at most K slots and, after
each write, keeps the K highest-scoring of (old slots + new captures) -- or, with
`eviction: oldest`, the K most recent. Because "keep the top K" composes, the bank that segment s
reads is simply the top K of all captures from segments < s; that is how the batched path
computes it (segment s never sees its own or a later segment's captures: causal by construction).

Reweave (at the input of block j, for j in reweave_layers): the tokens cross-attend (multi-head,
SDPA) to the slots of the banks j reads (hierarchical: banks l < j, i.e. states no deeper than
block j's own input; flat: every bank), each slot tagged with a learned embedding of its source
layer. Fused through a gate: h <- h + g * W_o r, g = sigmoid(W_g [LN(h); r] + gate_bias) per token
and channel. W_o has no bias, so an empty bank changes nothing; gate_bias = -4 makes an untrained
CMR close to `window`, and a gate bias of -inf makes it exactly `window`.

BPTT: a slot read at segment s that was captured at segment c carries gradient iff
s - c <= bptt_segments (0: every read is detached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.checks import int_at_least
from pipeline.config.schema import BackboneConfig, MemoryConfig, choices
from pipeline.errors import ConfigError
from pipeline.models.base import Memory, Step, record_self_attention

Selection = StrEnum("Selection", "learned norm random recent")
Eviction = StrEnum("Eviction", "salience oldest")
Mode = StrEnum("Mode", "hierarchical flat")
ScoreInput = StrEnum("ScoreInput", "block_input attention_input output")


@dataclass
class CMRConfig(MemoryConfig):
    """Contextual Memory Reweaving (METHOD.md section 2): capture banks + gated reweave."""

    name: str = "cmr"
    capture_layers: Optional[List[int]] = None  # null: every layer but the last
    reweave_layers: Optional[List[int]] = None  # null: every layer after the first capture layer
    # tokens captured per segment per capture layer (<= backbone.window); 4 of 16: fewer filler slots (far recall
    # 0.47-0.52 against 0.33-0.39 with 8; docs/RECIPE.md, "The short convolution, k, facts and steps")
    k: int = 4
    capacity: int = 32  # K: slots per bank (>= k)
    d_mem: Optional[int] = None  # slot width; null: d_model
    mem_heads: Optional[int] = None  # heads of the reweave cross-attention; null: n_heads
    selection: Selection = Selection.learned
    eviction: Eviction = Eviction.salience
    mode: Mode = Mode.hierarchical  # hierarchical: reweave j reads banks l < j; flat: every bank
    gate: bool = True  # false: plain residual add (ablation)
    gate_bias: float = -4.0  # untrained cmr ~ window
    # segments gradients flow back through the banks (0: detached): the whole short-pool document
    bptt_segments: int = 6
    # What the salience scorer reads: attention_input (the token entering the capture layer with its
    # short-convolution context, as the block's attention receives it) | block_input (the token alone: at layer 0
    # every '.' scores the same, and a seed that learned to keep the period closing each fact kept filler periods
    # as well on long documents: docs/RECIPE.md) | output (the captured state; salience then did not learn to rank
    # facts above filler and recall collapsed)
    score_input: ScoreInput = ScoreInput.attention_input
    # its own curriculum: the long pool from step 1,500, as cmr's recipe was found (docs/RECIPE.md, "Why the recipe
    # changed"). With the shared recipe's 1,000, seed 2 reached val_long 0.796 at step 1,500 and then fell to 0.377
    # and 0.210 while its val far recall rose to 0.997 (the collapse seen before with an early long pool)
    recipe: Dict[str, Any] = field(default_factory=lambda: {
        "curriculum": [{"until_step": 1500, "max_segments": 2}, {"until_step": None, "max_segments": 32}]})
    spans_document = True
    on_pretrained = True

    def check(self, backbone: BackboneConfig) -> None:
        b, p = backbone, "models.cmr"
        if not isinstance(self.k, int) or not 1 <= self.k <= b.window:
            raise ConfigError(f"{p}.k = {self.k} must be in [1, backbone.window = {b.window}]")
        if not isinstance(self.capacity, int) or self.capacity < self.k:
            raise ConfigError(f"{p}.capacity = {self.capacity} must be >= {p}.k = {self.k}")
        for key, kind in (("selection", Selection), ("eviction", Eviction), ("mode", Mode),
                          ("score_input", ScoreInput)):
            if getattr(self, key) not in choices(kind):
                raise ConfigError(f"{p}.{key} = {getattr(self, key)!r}; allowed: {list(choices(kind))}")
        if self.d_mem is not None:
            int_at_least(f"{p}.d_mem", self.d_mem, 1)
        heads = self.mem_heads if self.mem_heads is not None else b.n_heads
        if not isinstance(heads, int) or heads < 1 or b.d_model % heads:
            raise ConfigError(f"{p}.mem_heads = {self.mem_heads} must be a positive divisor of backbone.d_model = "
                              f"{b.d_model}")
        int_at_least(f"{p}.bptt_segments", self.bptt_segments, 0)
        if not isinstance(self.gate, bool):
            raise ConfigError(f"{p}.gate = {self.gate!r}; allowed: [true, false]")
        if b.hf_model is not None and self.score_input == "attention_input":
            raise ConfigError(f"{p}.score_input = 'attention_input' reads the project decoder's short convolution; "
                              "with backbone.hf_model use 'block_input' or 'output'")
        self._check_layers(b.n_layers)

    def _check_layers(self, n_layers: int) -> None:
        p = "models.cmr"
        capture, reweave = resolve_cmr_layers(self, n_layers)
        for key, layers in (("capture_layers", capture), ("reweave_layers", reweave)):
            if not layers:
                raise ConfigError(f"{p}.{key} = {layers} is empty (with backbone.n_layers = {n_layers}); "
                                  f"give at least one layer in [0, {n_layers - 1}]")
            bad = [x for x in layers if not isinstance(x, int) or not 0 <= x < n_layers]
            if bad:
                raise ConfigError(f"{p}.{key} = {layers}: {bad} outside [0, {n_layers - 1}] "
                                  f"(backbone.n_layers = {n_layers})")
            if len(set(layers)) != len(layers):
                raise ConfigError(f"{p}.{key} = {layers} has duplicates")
        if self.mode == "hierarchical":
            for j in reweave:
                if not any(l < j for l in capture):
                    raise ConfigError(
                        f"{p}.reweave_layers = {reweave}: layer {j} reads nothing in mode 'hierarchical' (it reads "
                        f"banks of capture layers l < {j}; {p}.capture_layers = {capture}); use mode 'flat' or "
                        "move the layer")


def resolve_cmr_layers(mem: CMRConfig, n_layers: int) -> tuple[list[int], list[int]]:
    """(capture layers, reweave layers) with the null defaults filled in.

    Bank of layer l holds outputs of block l; reweave at layer j acts on the input of block j.
    Hierarchical mode: reweave j reads banks l < j (states no deeper than its own input).
    """
    capture = list(mem.capture_layers) if mem.capture_layers is not None else list(range(n_layers - 1))
    if mem.reweave_layers is not None:
        reweave = list(mem.reweave_layers)
    else:
        reweave = list(range(min(capture) + 1, n_layers)) if capture else []
    return sorted(capture), sorted(reweave)


class Reweave(nn.Module):
    """Gated cross-attention from token states to bank slots. Projections are fused:
    LN(h) -> [query; gate_h], r -> [W_o r; gate_r], slots -> [key; value]."""

    def __init__(self, d_model: int, d_mem: int, n_heads: int, gate: bool, gate_bias: float):
        super().__init__()
        self.d, self.n_heads, self.use_gate = d_model, n_heads, gate
        self.ln = nn.LayerNorm(d_model)
        self.q_g = nn.Linear(d_model, 2 * d_model if gate else d_model, bias=False)
        self.kv = nn.Linear(d_mem, 2 * d_model, bias=False)
        self.o_g = nn.Linear(d_model, 2 * d_model if gate else d_model, bias=False)
        self.gate_bias = nn.Parameter(torch.full((d_model,), float(gate_bias))) if gate else None

    def forward(self, h, k, v, valid, return_probs: bool = False):
        """h: [B', T, D]; k, v: [B', H, n, hd] (slots missing from a bank are all-zero rows);
        valid: bool [B', n]. -> new h, gate g [B', T, D] (None without gate), probs"""
        Bp, T, D = h.shape
        H = self.n_heads
        qg = self.q_g(self.ln(h))
        q = qg[..., :D].view(Bp, T, H, D // H).transpose(1, 2)  # [B', H, T, hd]
        # a segment with no slot at all attends uniformly over zero rows: r = 0 exactly
        mask = (valid | ~valid.any(-1, keepdim=True))[:, None, None, :]
        probs = None
        if return_probs:
            att = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5
            probs = att.masked_fill(~mask, float("-inf")).softmax(-1)
            r = probs @ v
            probs = probs * valid.any(-1)[:, None, None, None]
        else:
            r = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        r = r.transpose(1, 2).reshape(Bp, T, D)  # [B', T, D]
        if not self.use_gate:
            return h + self.o_g(r), None, probs
        bias = torch.cat([self.gate_bias.new_zeros(D), self.gate_bias])  # gate bias rides in the matmul
        og = F.linear(r, self.o_g.weight, bias)  # [W_o r; W_gr r + b]
        g = torch.sigmoid(qg[..., D:] + og[..., D:])
        return torch.addcmul(h, g, og[..., :D]), g, probs


class CMRMemory(Memory):
    Config = CMRConfig
    cfg: CMRConfig

    def __init__(self, backbone: BackboneConfig, cfg: CMRConfig):
        super().__init__(backbone, cfg)
        d = backbone.d_model
        self.d_mem = cfg.d_mem or d
        self.capture_layers, self.reweave_layers = resolve_cmr_layers(cfg, backbone.n_layers)
        self.reads = {
            j: [l for l in self.capture_layers if cfg.mode == "flat" or l < j] for j in self.reweave_layers
        }
        # a reweave that reads a bank captured at its own depth or deeper needs the segment loop
        self.sequential = any(l >= j for j, ls in self.reads.items() for l in ls)
        self.scorer = nn.ModuleDict({str(l): nn.Linear(d, 1) for l in self.capture_layers})
        self.write = nn.ModuleDict({str(l): nn.Linear(d, self.d_mem) for l in self.capture_layers})  # P_l
        self.source = nn.Parameter(torch.zeros(len(self.capture_layers), self.d_mem))  # source-layer tags
        heads = cfg.mem_heads or backbone.n_heads
        self.reweave = nn.ModuleDict(
            {str(j): Reweave(d, self.d_mem, heads, cfg.gate, cfg.gate_bias) for j in self.reweave_layers}
        )

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("gate_bias"):
                nn.init.constant_(p, self.cfg.gate_bias)
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            else:
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def memory_floats(self) -> int:
        return len(self.capture_layers) * self.cfg.capacity * self.d_mem

    def chunk_segments(self, requested: Optional[int], S: int) -> int:
        return 1 if self.sequential else super().chunk_segments(requested, S)

    def new_state(self) -> dict:
        # bank: layer -> slots kept from earlier chunks; items: layer -> this chunk's captures;
        # sel: layer -> cached bank selection for this chunk
        return {"bank": {}, "items": {}, "sel": {}, "sizes": [], "gate_sum": 0.0, "gate_n": 0, "captured": {}}

    # ---- one layer ---------------------------------------------------------------------------
    def layer(self, l: int, block, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        if l in self.reads:
            h = self._reweave(l, h, state, step)
        h_in = h
        h, probs = block(h, return_probs=step.return_attention)
        if probs is not None:
            record_self_attention(step, l, probs, self.key_positions(step, step.T, 0), 0)
        if str(l) in self.write:
            self._capture(l, h, state, step, self._score_source(block, h_in, h))
        return h

    def _score_source(self, block, h_in: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.score_input == "block_input":
            return h_in
        if self.cfg.score_input == "attention_input":  # LN then the causal short convolution, as in Block
            xn = block.ln1(h_in)
            return block.conv(xn) if block.conv is not None else xn
        return h

    def _capture(self, l: int, h: torch.Tensor, state: dict, step: Step, h_score: torch.Tensor) -> None:
        """Write the top-k tokens of every segment that a later segment can read."""
        B, C, T = step.B, step.C, step.T
        cs = min(C, step.S - 1 - step.c0)  # the document's last segment is never read
        if cs <= 0:
            return
        D, k = h.shape[-1], self.cfg.k
        hs = h.view(B, C, T, D)[:, :cs]  # [B, cs, T, D]
        hz = h_score.view(B, C, T, D)[:, :cs]
        z = self.scorer[str(l)](F.layer_norm(hz, (D,))).squeeze(-1)  # salience logits [B, cs, T]
        a = torch.sigmoid(z)
        sel = self.cfg.selection
        if sel == "learned":  # z, not a: no ties where the sigmoid saturates
            score = z
        elif sel == "norm":
            score = hs.detach().norm(dim=-1)
        elif sel == "random":
            score = torch.rand(B, cs, T, device=h.device)
        else:  # recent
            score = torch.arange(T, device=h.device, dtype=h.dtype).expand(B, cs, T)
        idx = score.topk(k, dim=-1).indices  # [B, cs, k]
        if self.cfg.eviction == "oldest":
            idx = idx.sort(dim=-1).values  # capture order = position order
        flat = (idx + torch.arange(B * cs, device=h.device).view(B, cs, 1) * T).view(-1)
        h_sel = hs.reshape(B * cs * T, D).index_select(0, flat).view(B, cs, k, D)  # [B, cs, k, D]
        a_sel = a.gather(2, idx)
        value = a_sel[..., None] * self.write[str(l)](h_sel)  # [B, cs, k, d_mem]
        seg = torch.arange(step.c0, step.c0 + cs, device=h.device)  # [cs]
        pos = seg[None, :, None] * T + idx  # document positions [B, cs, k]
        if sel == "recent":  # evict by recency across segments too
            ev = pos.double()
        else:  # eviction: the same score (copies of one token tie; topk breaks the tie)
            ev = score.gather(2, idx).double()
        if step.return_attention:  # every capture, evicted or not (the memory diagnostics' "captured")
            state["captured"].setdefault(l, []).append(pos.reshape(B, cs * k))
        state["items"][l] = {
            "value": value.reshape(B, cs * k, self.d_mem),
            "score": ev.detach().reshape(B, cs * k),
            "seg": seg.repeat_interleave(k)[None].expand(B, cs * k),
            "pos": pos.reshape(B, cs * k),
        }

    def _candidates(self, l: int, state: dict) -> Optional[dict]:
        """Slots kept from earlier chunks followed by this chunk's captures (document order)."""
        parts = [p for p in (state["bank"].get(l), state["items"].get(l)) if p is not None]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        return {key: torch.cat([p[key] for p in parts], dim=1) for key in parts[0]}

    def _select(self, l: int, state: dict, step: Step, segs: torch.Tensor):
        """Bank l as read by each segment in `segs` [C'] (consecutive, >= the chunk start): indices
        [B, C', K] into the candidates and a validity mask [B, C', K]. (None, None) when no candidates."""
        cand = self._candidates(l, state)
        if cand is None:
            return None, None
        K = self.cfg.capacity
        if self.cfg.eviction == "oldest":  # candidates are in capture order: keep the last K allowed
            allowed = cand["seg"][:, None, :] < segs[None, :, None]  # [B, C', n]
            n_ok = allowed.sum(-1, keepdim=True)  # [B, C', 1]
            idx = n_ok - K + torch.arange(K, device=segs.device)  # [B, C', K]
            valid = idx >= 0
            return cand, (idx.clamp(min=0), valid)
        n0 = state["bank"][l]["seg"].shape[1] if l in state["bank"] else 0
        return cand, prefix_topk(cand["score"], cand["seg"], n0, segs, K, self.cfg.k)

    def _bank(self, l: int, state: dict, step: Step):
        if l not in state["sel"]:
            segs = torch.arange(step.c0, step.c0 + step.C, device=self.source.device)
            state["sel"][l] = self._select(l, state, step, segs)
        return state["sel"][l]

    # ---- reweave -----------------------------------------------------------------------------
    def _reweave(self, j: int, h: torch.Tensor, state: dict, step: Step) -> torch.Tensor:
        B, C, T = step.B, step.C, step.T
        rw = self.reweave[str(j)]
        D, H = h.shape[-1], rw.n_heads
        K = self.cfg.capacity
        kvs, valids, poss = [], [], []
        segs = torch.arange(step.c0, step.c0 + C, device=h.device)
        for l in self.reads[j]:
            cand, sel = self._bank(l, state, step)
            if cand is None:
                continue
            idx, valid = sel  # [B, C, K]
            src = self.source[self.capture_layers.index(l)]
            kv = F.pad(rw.kv(cand["value"] + src), (0, 0, 0, 1))  # [B, n+1, 2D]; row n: an empty slot
            n = kv.shape[1]
            idx = idx.masked_fill(~valid, n - 1)
            if torch.is_grad_enabled() and step.bptt < step.c0 + C - 1:  # some reads are too old:
                # rows n+1.. hold the same slots projected from detached values; too-old reads use them
                kv_old = F.pad(rw.kv(cand["value"].detach() + src), (0, 0, 0, 1))
                seg = F.pad(cand["seg"], (0, 1))
                age = segs[None, :, None] - seg.gather(1, idx.view(B, C * K)).view(B, C, K)
                idx = idx + (age > step.bptt) * n
                kv, n = torch.cat([kv, kv_old], dim=1), 2 * n
            flat = (idx.reshape(B, C * K) + torch.arange(B, device=h.device)[:, None] * n).view(-1)
            kvs.append(kv.reshape(B * n, 2 * D).index_select(0, flat).view(B, C, K, 2 * D))  # [B, C, K, 2D]
            valids.append(valid)
            if step.return_attention:
                pos = F.pad(cand["pos"], (0, 1), value=-1)
                poss.append(pos.gather(1, idx.reshape(B, C * K) % pos.shape[1]).view(B, C, K))
        if not kvs:  # nothing captured yet: the reweave adds exactly nothing
            if step.return_attention:
                self._record_empty(j, step, h)
            return h
        kv = kvs[0] if len(kvs) == 1 else torch.cat(kvs, dim=2)
        kv = kv.view(B * C, -1, 2, H, D // H)  # [B*C, n_slots, 2, H, hd]
        k, v = kv.permute(2, 0, 3, 1, 4)  # [B*C, H, n_slots, hd]
        valid = (valids[0] if len(valids) == 1 else torch.cat(valids, dim=2)).view(B * C, -1)
        h, g, probs = rw(h, k, v, valid, return_probs=step.return_attention)
        if g is not None:
            state["gate_sum"] = state["gate_sum"] + g.detach().sum()
            state["gate_n"] += g.numel()
        if step.return_attention:
            n = k.shape[2]
            step.record(j, "memory", probs.view(B, C, H, T, n).transpose(2, 3))  # [B, C, T, H, n]
            pos = torch.cat(poss, dim=2)  # [B, C, n]
            step.record(j, "slot_pos", pos[:, :, None, :].expand(B, C, T, n))
            step.record(j, "slot_layer", self._slot_layers(j, h.device), per_query=False)
            gm = g.mean(-1) if g is not None else torch.ones(B * C, T, device=h.device)
            step.record(j, "gate", gm.view(B, C, T))
        return h

    def _slot_layers(self, j: int, device) -> torch.Tensor:
        return torch.tensor(self.reads[j], device=device).repeat_interleave(self.cfg.capacity)

    def _record_empty(self, j: int, step: Step, h: torch.Tensor) -> None:
        B, C, T = step.B, step.C, step.T
        n = len(self.reads[j]) * self.cfg.capacity
        H = self.reweave[str(j)].n_heads
        step.record(j, "memory", h.new_zeros(B, C, T, H, n))
        step.record(j, "slot_pos", torch.full((B, C, T, n), -1, device=h.device, dtype=torch.long))
        step.record(j, "slot_layer", self._slot_layers(j, h.device), per_query=False)
        step.record(j, "gate", h.new_zeros(B, C, T))

    # ---- between chunks ----------------------------------------------------------------------
    def end_chunk(self, state: dict, step: Step) -> None:
        sizes = []  # per capture layer: [B][C] bank sizes as each segment of the chunk read them
        for l in self.capture_layers:
            cand, sel = self._bank(l, state, step)
            sizes.append([[0] * step.C] * step.B if sel is None else sel[1].sum(-1).tolist())
        if not state["sizes"]:
            state["sizes"] = [[] for _ in range(step.B)]
        for b, doc in enumerate(state["sizes"]):  # document b, segment s: one size per capture layer
            doc.extend([list(per_layer) for per_layer in zip(*(layer[b] for layer in sizes))])
        if not step.last_chunk:  # the bank carried on: top K (or last K) of old slots + new captures
            K = self.cfg.capacity
            for l in self.capture_layers:
                cand = self._candidates(l, state)
                if cand is None:
                    continue
                B, n = cand["seg"].shape
                if self.cfg.eviction == "oldest":
                    idx = torch.arange(max(0, n - K), n, device=cand["seg"].device).expand(B, -1)
                else:
                    idx = cand["score"].topk(min(K, n), dim=-1).indices  # [B, <=K]
                state["bank"][l] = {
                    key: t.gather(1, idx[..., None].expand(*idx.shape, t.shape[-1]) if t.dim() == 3 else idx)
                    for key, t in cand.items()
                }
        state["items"], state["sel"] = {}, {}

    def diagnostics(self, state: dict, step: Step) -> dict:
        n = state["gate_n"]
        gate = float(state["gate_sum"] / n) if n else (0.0 if self.cfg.gate else 1.0)
        out = {"bank_sizes": state["sizes"], "gate_mean": gate}  # bank_sizes[b][s][l]: doc b, segment s, layer l
        if step.return_attention:  # capture layer -> [B, n] document positions ever written to its bank
            out["captured_pos"] = {l: torch.cat(ps, dim=1) for l, ps in state["captured"].items()}
        return out


def prefix_topk(score: torch.Tensor, seg: torch.Tensor, n0: int, segs: torch.Tensor, K: int, k: int, block: int = 8):
    """For each segment s in `segs`, the K highest-scoring candidates with seg < s.

    score, seg: [B, n]; the first n0 candidates are older slots (seg < segs[0]), the rest are
    captures in segment order, k per segment starting at segment segs[0]. A plain masked top-k over
    [B, C', n] costs O(C' n) = O(S^2 k). Instead: (1) one masked top-k gives the bank at the start
    of every block of `block` segments, (2) each segment picks its bank from its block's start bank
    plus the block's own captures (K + block*k candidates), in one batched top-k.
    -> idx [B, C', K] (into the candidates), valid [B, C', K]
    """
    B, n = score.shape
    C, dev = segs.shape[0], score.device
    starts = segs[::block]  # [nb] first segment of each block
    nb = starts.shape[0]
    ok0 = seg[:, None, :] < starts[None, :, None]  # [B, nb, n]
    top0 = score[:, None, :].masked_fill(~ok0, float("-inf")).topk(min(K, n), dim=-1).indices  # [B, nb, K']
    new = n0 + torch.arange(nb, device=dev)[:, None] * (block * k) + torch.arange(block * k, device=dev)  # [nb, block*k]
    cand = torch.cat([top0, new.clamp(max=n - 1).expand(B, nb, -1)], dim=-1)  # [B, nb, width]
    ok = torch.cat([ok0.gather(2, top0), (new < n).expand(B, nb, -1)], dim=-1)
    blk = torch.arange(C, device=dev) // block
    cand, ok = cand[:, blk], ok[:, blk]  # [B, C, width]
    width = cand.shape[-1]
    allowed = ok & (seg.gather(1, cand.view(B, -1)).view(B, C, width) < segs[None, :, None])
    sc = score.gather(1, cand.view(B, -1)).view(B, C, width).masked_fill(~allowed, float("-inf"))
    top = sc.topk(min(K, width), dim=-1).indices  # [B, C, <=K]
    idx, valid = cand.gather(2, top), allowed.gather(2, top)
    pad = K - idx.shape[-1]
    if pad:
        idx, valid = F.pad(idx, (0, pad)), F.pad(valid, (0, pad))
    return idx, valid


MEMORY = CMRMemory
