"""A memory inside a pretrained Hugging Face causal LM: the backbone frozen, the memory trained.

`HFMemoryLM(lm, memory, window)` reads a document window by window, exactly as MemoryLM does: the document
is cut into windows of `window` tokens, each read by `lm` alone (positions restart at 0) as one row of a
batch of B*C windows per chunk of C windows. `build_hf_model` sets the window to the LM's own context (GPT-2's
1,024, the stand-in's 256) in whole segments of the data: the LM reads what it was trained to read, and the
memory carries what lies beyond. Each of the LM's decoder layers is wrapped (`MemoryLayer`), so
the memory's own `layer(l, block, h, state, step)` runs around it: for `cmr`, the reweave on the layer's
input and the capture of its output, the same modules and code as in the study's models (pipeline/models/
cmr.py). With the base `Memory` (the `window` variant) the wrapped LM computes exactly what the bare LM
computes on each window; so does `cmr` with its gate shut (gate bias -inf).

Supported layouts (DECODER_LAYERS): GPT-2, GPT-NeoX (Pythia) and Llama. The LM is loaded by the caller
(`AutoModelForCausalLM.from_pretrained(<folder or hub name>)`), so a model saved with `save_pretrained` on a
machine without hub access works the same as a hub name elsewhere. A folder holding a PEFT adapter (LoRA, saved
by `cmr-repro hf-pretrain --lora-rank R`) loads as its base LM with the adapter added; the adapter then trains with
the memory, the base stays frozen (with `window`, the bare LM fine-tuned through its adapter alone). The scorer
reads the layer's input or output (`score_input: block_input | output`): these layers have no short convolution.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.schema import BackboneConfig, MemoryConfig
from pipeline.errors import ConfigError
from pipeline.models.base import Memory, ModelOutput, Step
from pipeline.models.registry import check_model, memory_class, memory_config

# config.model_type -> where its decoder layers live
DECODER_LAYERS = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "llama": "model.layers"}


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    if model_type not in DECODER_LAYERS:
        raise ConfigError(f"Hugging Face model type {model_type!r} is not supported; supported: {sorted(DECODER_LAYERS)}")
    return lm.get_submodule(DECODER_LAYERS[model_type])


def lm_context(lm: nn.Module) -> Optional[int]:
    """The LM's trained context in tokens (config.n_positions or max_position_embeddings), None if it declares none."""
    for key in ("n_positions", "max_position_embeddings"):
        n = getattr(lm.config, key, None)
        if n:
            return int(n)
    return None


def read_window(lm: nn.Module, segment: int) -> int:
    """The window the LM reads a document in: its own context, rounded down to whole segments of `segment` tokens
    (the data's layout unit, backbone.window), so a window never splits a segment's facts."""
    context = lm_context(lm)
    if context is None:
        return int(segment)
    if context < segment:
        raise ConfigError(f"the pretrained LM's context ({context} tokens) is shorter than backbone.window={segment}")
    return context // segment * segment


def adapter_parameters(lm: nn.Module) -> list:
    """The LM's PEFT adapter weights (LoRA's A and B): a `backbone.hf_model` folder saved by peft (an adapter
    beside its base model's name) loads as the base LM with these added, and they are what trains besides the
    memory (the base stays frozen). Empty for a plain LM."""
    if not getattr(lm, "_hf_peft_config_loaded", False):
        return []
    return [p for n, p in lm.named_parameters() if "lora_" in n]


def backbone_of(lm: nn.Module, window: int) -> BackboneConfig:
    """The BackboneConfig a memory sizes itself by: the LM's width, depth and heads, the window it reads."""
    c = lm.config
    d = getattr(c, "hidden_size", None) or c.n_embd
    heads = getattr(c, "num_attention_heads", None) or c.n_head
    return BackboneConfig(d_model=d, n_layers=len(decoder_layers(lm)), n_heads=heads, d_ff=4 * d, window=window,
                          conv_kernel=0, hf_model=getattr(c, "_name_or_path", "") or "in-memory")


class _Block:
    """The wrapped decoder layer as a memory calls a block: block(h, return_probs) -> (h, None), keeping the
    layer's own extra arguments (masks, rotary embeddings) and its output format."""

    def __init__(self, layer: nn.Module, args: tuple, kwargs: dict):
        self.layer, self.args, self.kwargs, self.rest = layer, args, kwargs, None

    def __call__(self, h: torch.Tensor, return_probs: bool = False):
        out = self.layer(h, *self.args, **self.kwargs)
        if isinstance(out, tuple):  # transformers 4.x layers return (hidden_states, ...)
            out, self.rest = out[0], out[1:]
        return out, None


class MemoryLayer(nn.Module):
    """Decoder layer l of the LM with the memory around it (state and step set by HFMemoryLM per chunk)."""

    def __init__(self, layer: nn.Module, l: int, owner: "HFMemoryLM"):
        super().__init__()
        self.layer, self.l = layer, l
        self._owner = [owner]  # a list: not registered as a submodule (no cycle in the module tree)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        owner = self._owner[0]
        if owner.state is None:  # the LM called on its own, outside HFMemoryLM.forward: the bare layer
            return self.layer(hidden_states, *args, **kwargs)
        block = _Block(self.layer, args, kwargs)
        h = owner.memory.layer(self.l, block, hidden_states, owner.state, owner.step)
        return h if block.rest is None else (h, *block.rest)


class HFMemoryLM(nn.Module):
    """A frozen pretrained causal LM read window by window, with a trainable memory across windows."""

    def __init__(self, lm: nn.Module, memory: Memory, window: int):
        super().__init__()  # the memory was checked against the LM by build_hf_model (registry.check_model)
        self.lm, self.memory, self.window = lm, memory, int(window)
        self.name, self.memory_cfg = memory.cfg.name, memory.cfg
        self.lm.requires_grad_(False)
        for p in adapter_parameters(lm):  # LoRA adapters loaded with the LM train beside the memory
            p.requires_grad_(True)
        layers = decoder_layers(lm)
        for l in range(len(layers)):
            layers[l] = MemoryLayer(layers[l], l, self)
        if hasattr(memory, "reset_parameters"):
            memory.reset_parameters()
        self.state: Optional[dict] = None
        self.step: Optional[Step] = None

    def train(self, mode: bool = True) -> "HFMemoryLM":
        super().train(mode)
        self.lm.eval()  # the frozen backbone never drops out (the memory, not inside it, does as told)
        return self

    def memory_floats(self) -> int:
        return self.memory.memory_floats()

    def num_parameters(self) -> int:
        """Trainable parameters (the memory's and the LM's adapters, if it has any)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, input_ids: torch.Tensor, *, bptt_segments: Optional[int] = None,
                chunk_segments: Optional[int] = None, logits_at: Optional[torch.Tensor] = None,
                return_attention: bool = False) -> ModelOutput:
        B, N = input_ids.shape
        T = min(self.window, N)
        S = math.ceil(N / T)
        ids = F.pad(input_ids, (0, S * T - N)).view(B, S, T)  # padding after every real token: causal, harmless
        bptt = getattr(self.memory_cfg, "bptt_segments", 0) if bptt_segments is None else bptt_segments
        self.state = self.memory.new_state()
        C = self.memory.chunk_segments(chunk_segments, S)
        outs, step = [], None
        try:
            for c0 in range(0, S, C):
                step = self.step = Step(B, N, S, T, c0, min(C, S - c0), bptt, return_attention)
                logits = self.lm(input_ids=ids[:, c0:c0 + step.C].reshape(B * step.C, T), use_cache=False).logits
                self.memory.end_chunk(self.state, step)
                outs.append(logits.view(B, step.C * T, -1))
            diag = self.memory.diagnostics(self.state, step)
        finally:
            self.state = self.step = None
        logits = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))[:, :N]
        if torch.is_grad_enabled() and not logits.requires_grad:
            # a batch read in one window never reaches the memory: a zero that keeps the backward valid (its
            # gradients are zero; the optimizer still steps on its moments)
            logits = logits + 0.0 * sum(p.sum() for p in self.memory.parameters() if p.requires_grad)
        if logits_at is not None:
            logits = logits.gather(1, logits_at.clamp(min=0)[..., None].expand(-1, -1, logits.size(-1)))
        return ModelOutput(logits=logits, diagnostics=diag)


def build_hf_model(lm: nn.Module, memory_cfg: Any, segment: int) -> HFMemoryLM:
    """HFMemoryLM for a memory config (one whose config sets `on_pretrained`) around a loaded causal LM, reading
    windows of the LM's own context (`read_window`, in whole segments of `segment` tokens), checked against it by
    registry.check_model (supported memories, each memory's own checks)."""
    window = read_window(lm, segment)
    backbone = backbone_of(lm, window)
    mem: MemoryConfig = memory_config(memory_cfg)
    check_model(backbone, mem)
    return HFMemoryLM(lm, memory_class(mem.name)(backbone, mem), window)
