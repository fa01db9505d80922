"""Model configuration: the shared backbone and one dataclass per memory variant.

No torch import here, so composing and validating a config stays fast. The yaml files in
conf/backbone/ and conf/model/ hold exactly these keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

from pipeline.config_access import cfg_path
from pipeline.data.config import as_data_config
from pipeline.errors import ConfigError

# variant -> (module, class): pipeline.models.build_model imports only the chosen memory's module, so a stage
# that trains or evaluates one variant depends on that file alone among the memories (dvc.yaml lists them so)
MEMORIES = {
    "window": ("pipeline.models.window", "WindowMemory"),
    "xl": ("pipeline.models.xl", "XLMemory"),
    "full": ("pipeline.models.full", "FullMemory"),
    "cmr": ("pipeline.models.cmr", "CMRMemory"),
    "rmt": ("pipeline.models.rmt", "RMTMemory"),
    "armt": ("pipeline.models.armt", "ARMTMemory"),
    "memorizing": ("pipeline.models.memorizing", "MemorizingMemory"),
}

POSITIONS = ("rotary", "learned")
SELECTIONS = ("learned", "norm", "random", "recent")
EVICTIONS = ("salience", "oldest")
MODES = ("hierarchical", "flat")
SCORE_INPUTS = ("block_input", "attention_input", "output")


@dataclass
class BackboneConfig:
    """The decoder shared by every variant (pre-LN, causal SDPA attention, GELU MLP)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    window: int = 16  # W: tokens per segment for window/xl/cmr
    positions: str = "rotary"  # rotary | learned
    rope_base: float = 10000.0
    dropout: float = 0.0
    max_positions: int = 4096  # size of the learned position table: with positions=learned, `full`'s longest input
    tie_embeddings: bool = True
    conv_kernel: int = 4  # causal depthwise short convolution (taps) on each attention input; 0: none
    # a pretrained Hugging Face causal LM (a save_pretrained folder or a hub name) as the frozen backbone in
    # place of the decoder above (whose sizes then only size `cmr-repro hf-pretrain`); null: the decoder
    hf_model: Optional[str] = None


HF_VARIANTS = ("window", "cmr")  # the memories pipeline/models/hf.py attaches to a pretrained LM


@dataclass
class MemoryConfig:
    """Base of every memory config; `name` picks the variant (window, xl, full, cmr, rmt, armt, memorizing)."""

    name: str = "window"


@dataclass
class WindowConfig(MemoryConfig):
    """Each segment of W tokens sees only itself (the paper's baseline)."""

    name: str = "window"


@dataclass
class FullConfig(MemoryConfig):
    """One causal attention over all N tokens (quality and cost ceiling)."""

    name: str = "full"


@dataclass
class XLConfig(MemoryConfig):
    """Transformer-XL: each layer also attends to the detached states of the previous mem_len tokens."""

    name: str = "xl"
    mem_len: int = 16


@dataclass
class CMRConfig(MemoryConfig):
    """Contextual Memory Reweaving (METHOD.md section 2): capture banks + gated reweave."""

    name: str = "cmr"
    capture_layers: Optional[List[int]] = None  # null: every layer but the last
    reweave_layers: Optional[List[int]] = None  # null: every layer after the first capture layer
    k: int = 8  # tokens captured per segment per capture layer
    capacity: int = 32  # K: slots per bank
    d_mem: Optional[int] = None  # null: d_model
    mem_heads: Optional[int] = None  # heads of the reweave cross-attention; null: n_heads
    selection: str = "learned"  # learned | norm | random | recent
    eviction: str = "salience"  # salience | oldest
    mode: str = "hierarchical"  # hierarchical | flat
    gate: bool = True  # false: plain residual add (ablation)
    gate_bias: float = -4.0
    bptt_segments: int = 4  # segments gradients flow back through the banks (0: detached)
    score_input: str = "attention_input"  # what the scorer reads: block_input (the token as it enters the
    # capture layer, before the block mixes tokens) | attention_input (the same plus its short-convolution
    # context: what the block's attention receives) | output (the captured state itself)


@dataclass
class RMTConfig(MemoryConfig):
    """Recurrent Memory Transformer (Bulatov et al. 2022): mem_tokens read at a segment's start, written at its end."""

    name: str = "rmt"
    mem_tokens: int = 8  # m: memory state m * d_model floats
    bptt_segments: int = 4  # memory transitions gradients flow back through (0: detached)


@dataclass
class ARMTConfig(MemoryConfig):
    """Associative RMT (Rodkin et al. 2024): per-layer associative matrices written by a delta rule."""

    name: str = "armt"
    mem_tokens: int = 4  # write tokens appended to every segment (learned; their outputs are written)
    d_key: int = 8  # key projection width before the feature map
    nu: int = 1  # DPFP order: feature width 2 * nu * d_key
    bptt_segments: int = 4  # segments gradients flow back through the matrices (0: detached)


@dataclass
class MemorizingConfig(MemoryConfig):
    """Memorizing Transformer (Wu et al. 2022): one layer also attends to the top-k of a store of past keys/values."""

    name: str = "memorizing"
    layer: Optional[int] = None  # the retrieval layer; null: the last
    store: int = 256  # bound of the store: the (key, value) pairs of the last `store` tokens before the segment
    top_k: int = 8  # retrieved pairs per query and head


MEMORY_CONFIGS: dict[str, type] = {
    "window": WindowConfig,
    "xl": XLConfig,
    "full": FullConfig,
    "cmr": CMRConfig,
    "rmt": RMTConfig,
    "armt": ARMTConfig,
    "memorizing": MemorizingConfig,
}
MODEL_NAMES: tuple[str, ...] = tuple(MEMORY_CONFIGS)


def _as_dict(cfg: Any) -> dict:
    """Plain dict from a dataclass, DictConfig or mapping (no OmegaConf import unless needed)."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConfigError(f"expected a config mapping, got {type(cfg).__name__}")


def _build(cls: type, d: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(known)}")
    return cls(**d)


def backbone_config(cfg: Any) -> BackboneConfig:
    """BackboneConfig from any mapping; unknown keys are an error, not silently dropped."""
    if isinstance(cfg, BackboneConfig):
        return cfg
    return _build(BackboneConfig, _as_dict(cfg), "backbone")


def memory_config(cfg: Any) -> MemoryConfig:
    """The typed memory config for `cfg.name`; unknown names list the allowed ones."""
    if isinstance(cfg, MemoryConfig):
        d = dataclasses.asdict(cfg)
    else:
        d = _as_dict(cfg)
    name = d.get("name")
    if name not in MEMORY_CONFIGS:
        raise ConfigError(f"models.<variant>.name = {name!r} is not a known memory; allowed: {list(MODEL_NAMES)}")
    return _build(MEMORY_CONFIGS[name], d, f"models.{name}")


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


def check_model(backbone: BackboneConfig, mem: MemoryConfig) -> None:
    """Checks that need only the backbone and one variant (build_model runs these)."""
    b = backbone
    _int_at_least("backbone.d_model", b.d_model, 1)
    _int_at_least("backbone.n_layers", b.n_layers, 1)
    _int_at_least("backbone.n_heads", b.n_heads, 1)
    _int_at_least("backbone.d_ff", b.d_ff, 1)
    _int_at_least("backbone.window", b.window, 1)
    _int_at_least("backbone.max_positions", b.max_positions, 1)
    _int_at_least("backbone.conv_kernel", b.conv_kernel, 0)
    if b.conv_kernel > b.window:
        raise ConfigError(f"backbone.conv_kernel = {b.conv_kernel} must be <= backbone.window = {b.window}")
    if b.d_model % b.n_heads:
        raise ConfigError(f"backbone.n_heads = {b.n_heads} must divide backbone.d_model = {b.d_model}")
    if b.positions not in POSITIONS:
        raise ConfigError(f"backbone.positions = {b.positions!r}; allowed: {list(POSITIONS)}")
    if b.positions == "rotary" and (b.d_model // b.n_heads) % 2:
        raise ConfigError(f"backbone.d_model / n_heads = {b.d_model // b.n_heads} must be even for rotary positions")
    if not 0.0 <= b.dropout < 1.0:
        raise ConfigError(f"backbone.dropout = {b.dropout} must be in [0, 1)")
    if b.window > b.max_positions:
        raise ConfigError(f"backbone.window = {b.window} must be <= backbone.max_positions = {b.max_positions}")

    if b.hf_model is not None:
        if not isinstance(b.hf_model, str) or not b.hf_model:
            raise ConfigError(f"backbone.hf_model = {b.hf_model!r} must be null or a folder / hub name")
        if mem.name not in HF_VARIANTS:
            raise ConfigError(f"`{mem.name}` on a pretrained Hugging Face backbone (backbone.hf_model) is not "
                              f"supported; supported: {list(HF_VARIANTS)}")
        if isinstance(mem, CMRConfig) and mem.score_input == "attention_input":
            raise ConfigError("models.cmr.score_input = 'attention_input' reads the project decoder's short "
                              "convolution; with backbone.hf_model use 'block_input' or 'output'")

    if isinstance(mem, XLConfig):
        _int_at_least("models.xl.mem_len", mem.mem_len, 1)
    elif isinstance(mem, CMRConfig):
        _check_cmr(b, mem)
    elif isinstance(mem, RMTConfig):
        _int_at_least("models.rmt.mem_tokens", mem.mem_tokens, 1)
        _int_at_least("models.rmt.bptt_segments", mem.bptt_segments, 0)
    elif isinstance(mem, ARMTConfig):
        for key in ("mem_tokens", "d_key", "nu"):
            _int_at_least(f"models.armt.{key}", getattr(mem, key), 1)
        _int_at_least("models.armt.bptt_segments", mem.bptt_segments, 0)
    elif isinstance(mem, MemorizingConfig):
        _int_at_least("models.memorizing.top_k", mem.top_k, 1)
        if not isinstance(mem.store, int) or mem.store < mem.top_k:
            raise ConfigError(f"models.memorizing.store = {mem.store!r} must be an integer >= models.memorizing.top_k = {mem.top_k}")
        if mem.layer is not None and (not isinstance(mem.layer, int) or not 0 <= mem.layer < b.n_layers):
            raise ConfigError(f"models.memorizing.layer = {mem.layer!r} must be null or in [0, {b.n_layers - 1}]")


def _check_cmr(b: BackboneConfig, m: CMRConfig) -> None:
    p = "models.cmr"
    if not isinstance(m.k, int) or not 1 <= m.k <= b.window:
        raise ConfigError(f"{p}.k = {m.k} must be in [1, backbone.window = {b.window}]")
    if not isinstance(m.capacity, int) or m.capacity < m.k:
        raise ConfigError(f"{p}.capacity = {m.capacity} must be >= {p}.k = {m.k}")
    for key, val, allowed in (
        ("selection", m.selection, SELECTIONS),
        ("eviction", m.eviction, EVICTIONS),
        ("mode", m.mode, MODES),
        ("score_input", m.score_input, SCORE_INPUTS),
    ):
        if val not in allowed:
            raise ConfigError(f"{p}.{key} = {val!r}; allowed: {list(allowed)}")
    if m.d_mem is not None:
        _int_at_least(f"{p}.d_mem", m.d_mem, 1)
    heads = m.mem_heads if m.mem_heads is not None else b.n_heads
    if not isinstance(heads, int) or heads < 1 or b.d_model % heads:
        raise ConfigError(f"{p}.mem_heads = {m.mem_heads} must be a positive divisor of backbone.d_model = {b.d_model}")
    _int_at_least(f"{p}.bptt_segments", m.bptt_segments, 0)
    if not isinstance(m.gate, bool):
        raise ConfigError(f"{p}.gate = {m.gate!r}; allowed: [true, false]")
    capture, reweave = resolve_cmr_layers(m, b.n_layers)
    for key, layers in (("capture_layers", capture), ("reweave_layers", reweave)):
        if not layers:
            raise ConfigError(
                f"{p}.{key} = {layers} is empty (with backbone.n_layers = {b.n_layers}); "
                f"give at least one layer in [0, {b.n_layers - 1}]"
            )
        bad = [x for x in layers if not isinstance(x, int) or not 0 <= x < b.n_layers]
        if bad:
            raise ConfigError(f"{p}.{key} = {layers}: {bad} outside [0, {b.n_layers - 1}] (backbone.n_layers = {b.n_layers})")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"{p}.{key} = {layers} has duplicates")
    if m.mode == "hierarchical":
        for j in reweave:
            if not any(l < j for l in capture):
                raise ConfigError(
                    f"{p}.reweave_layers = {reweave}: layer {j} reads nothing in mode 'hierarchical' "
                    f"(it reads banks of capture layers l < {j}; {p}.capture_layers = {capture}); "
                    f"use mode 'flat' or move the layer"
                )


def _int_at_least(key: str, val: Any, lo: int) -> None:
    if not isinstance(val, int) or isinstance(val, bool) or val < lo:
        raise ConfigError(f"{key} = {val!r} must be an integer >= {lo}")


def longest_input(full_cfg: Any) -> int:
    """Longest document the config will feed a model: eval and val_long lengths, rare length, training docs."""
    lengths = [int(n) for n in (cfg_path(full_cfg, "data.eval_lengths", []) or [])]
    lengths += [int(n) for n in (cfg_path(full_cfg, "data.val_long_lengths", []) or [])]
    rare = cfg_path(full_cfg, "data.rare_eval_length")
    if rare is not None:
        lengths.append(int(rare))
    max_seg = as_data_config(cfg_path(full_cfg, "data")).longest_train_segments \
        if cfg_path(full_cfg, "data.train_max_segments") is not None else None
    window = cfg_path(full_cfg, "backbone.window")
    if max_seg is not None and window is not None:
        lengths.append(int(max_seg) * int(window))
    return max(lengths, default=0)


def validate(cfg: Any, full_cfg: Any = None) -> None:
    """Cross-field checks of backbone + every studied variant; raises ConfigError naming the key.

    Accepts the whole composed config (`validate(cfg)`) or the contract's form
    `validate(cfg_part, full_cfg)`, in which case the whole config `full_cfg` is checked.
    """
    root = full_cfg if full_cfg is not None else cfg
    backbone = backbone_config(cfg_path(root, "backbone", {}))
    models = cfg_path(root, "models", {}) or {}
    variants = list(cfg_path(root, "study.variants", None) or list(models))
    for v in variants:
        if v not in MEMORY_CONFIGS:
            raise ConfigError(f"study.variants: {v!r} is not a known memory; allowed: {list(MODEL_NAMES)}")
        if v not in models:
            raise ConfigError(f"models.{v} is missing (study.variants lists it); configured: {sorted(models)}")
        mem = memory_config(models[v])
        if mem.name != v:
            raise ConfigError(f"models.{v}.name = {mem.name!r} must equal its key {v!r}")
        check_model(backbone, mem)
        if v == "full" and backbone.positions == "learned":  # rotary positions have no table to outgrow
            need = longest_input(root)
            if backbone.max_positions < need:
                raise ConfigError(
                    f"backbone.max_positions = {backbone.max_positions} must be >= {need} "
                    f"(the longest input `full` reads: data.eval_lengths / val_long_lengths / rare_eval_length / training docs)"
                )
