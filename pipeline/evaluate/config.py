"""Schema of the `eval` config group (conf/eval/*.yaml). No torch import: the config layer must
load fast and without the training stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config_access import cfg_get as _get
from pipeline.errors import ConfigError

# Every task the evaluation stage runs. The attention analysis is its own stage
# (`python -m pipeline.evaluate.attention`, experiments/attention/), configured by eval.attention.
TASKS = ("recall", "rare", "numeric", "dialogue", "overhead")
DEVICES = ("cpu", "cuda", "auto")


@dataclass
class OverheadConfig:
    """Table III: inference cost. The paper's protocol: batch 1, no grad, warm-up, median of repeats."""

    lengths: list[int] = field(default_factory=lambda: [500, 1000, 1500, 2000, 2500])
    warmup: int = 2
    repeats: int = 5
    batch_size: int = 1
    # Peak memory is measured in a separate (untimed) forward, since tracking slows the ops down.
    measure_memory: bool = True


@dataclass
class AttentionConfig:
    """The attention analysis (METHOD.md section 4, row `attention`): a few recall documents per
    length, batch 1, attention maps read at the query positions. Cheap on purpose."""

    lengths: Optional[list[int]] = None  # each must be in data.eval_lengths; null: all of them
    n_docs: int = 4                      # first documents of each recall_<N> split
    max_queries: Optional[int] = None    # first queries of each document; null = all of them


@dataclass
class EvalConfig:
    batch_size: int = 16          # documents per forward (same-length documents only)
    threads: int = 1              # torch.set_num_threads: fixed, so ms/token is comparable
    device: str = "cpu"           # cpu | cuda | auto (cuda when available)
    tasks: list[str] = field(default_factory=lambda: [t for t in TASKS if t != "overhead"])  # overhead: own stage
    max_docs_per_split: Optional[int] = None   # null = every document of each split
    # Table IV buckets (training-split counts). null = the data config's rare classes.
    rare_buckets: Optional[list[int]] = None
    overhead: OverheadConfig = field(default_factory=OverheadConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)




def _pos_int(value: Any, key: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"eval.{key} must be an integer >= {minimum}, got {value!r}")


def data_rare_classes(full_cfg: Any) -> list[int] | None:
    """The intended training counts of the rare value classes, from the data config (if it has them)."""
    data = _get(full_cfg, "data")
    for key in ("rare_classes", "rare_counts", "rare_class_counts"):
        value = _get(data, key)
        if value is not None:
            return [int(v) for v in value]
    return None


def rare_buckets(full_cfg: Any) -> list[int]:
    """The Table IV buckets: eval.rare_buckets if set, else the data config's rare classes."""
    explicit = _get(_get(full_cfg, "eval"), "rare_buckets")
    if explicit is not None:
        return sorted(int(v) for v in explicit)
    from_data = data_rare_classes(full_cfg)
    if from_data is None:
        raise ConfigError("eval.rare_buckets is null and data has no rare_classes: set eval.rare_buckets, "
                          "e.g. [10, 50, 100, 500, 1000]")
    return sorted(from_data)


def validate(cfg: Any, full_cfg: Any = None) -> None:
    """Cross-field checks. Accepts (eval_cfg, full_cfg) as in the contract, or the full config alone
    (as pipeline.config.validate calls every component)."""
    if full_cfg is None:
        full_cfg, cfg = cfg, _get(cfg, "eval")
    if cfg is None:
        raise ConfigError("missing config group 'eval'")
    tasks = list(_get(cfg, "tasks", []))
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"eval.tasks: unknown task '{t}'; allowed: {', '.join(TASKS)}")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"eval.tasks lists a task twice: {tasks}")
    _pos_int(_get(cfg, "batch_size"), "batch_size")
    _pos_int(_get(cfg, "threads"), "threads")
    device = _get(cfg, "device", "cpu")
    if device not in DEVICES:
        raise ConfigError(f"eval.device: unknown device '{device}'; allowed: {', '.join(DEVICES)}")
    mdps = _get(cfg, "max_docs_per_split")
    if mdps is not None:
        _pos_int(mdps, "max_docs_per_split")
    oh = _get(cfg, "overhead")
    lengths = list(_get(oh, "lengths", []))
    if not lengths:
        raise ConfigError("eval.overhead.lengths must list at least one sequence length")
    for n in lengths:
        _pos_int(n, "overhead.lengths[]")
    _pos_int(_get(oh, "warmup"), "overhead.warmup", minimum=0)
    _pos_int(_get(oh, "repeats"), "overhead.repeats")
    _pos_int(_get(oh, "batch_size"), "overhead.batch_size")
    buckets = _get(cfg, "rare_buckets")
    if buckets is not None:
        if not list(buckets):
            raise ConfigError("eval.rare_buckets must be null or a non-empty list of counts")
        for b in buckets:
            _pos_int(b, "rare_buckets[]")
    # `full` reads a whole document at once, so its position range must cover the timed lengths too
    # (the models' own check covers data.eval_lengths, not these).
    max_pos = _get(_get(full_cfg, "backbone"), "max_positions")
    variants = list(_get(_get(full_cfg, "study"), "variants", None) or list(_get(full_cfg, "models", None) or []))
    learned = _get(_get(full_cfg, "backbone"), "positions", "rotary") == "learned"
    if "full" in variants and learned and max_pos is not None and max(lengths) > int(max_pos):
        raise ConfigError(f"eval.overhead.lengths: {max(lengths)} exceeds backbone.max_positions={max_pos}, "
                          "the longest input the `full` variant accepts; lower the length or raise max_positions")
    if "rare" in tasks and full_cfg is not None and _get(full_cfg, "data") is not None:
        rare_buckets(full_cfg)  # raises if neither eval nor data names the buckets
    _validate_attention(_get(cfg, "attention"), full_cfg)


def _validate_attention(att: Any, full_cfg: Any) -> None:
    """eval.attention reads the recall_<N> splits, so its lengths must be data.eval_lengths."""
    if att is None:
        return
    _pos_int(_get(att, "n_docs"), "attention.n_docs")
    mq = _get(att, "max_queries")
    if mq is not None:
        _pos_int(mq, "attention.max_queries")
    lengths = _get(att, "lengths", None)
    if lengths is None:  # null: every data.eval_lengths
        return
    lengths = list(lengths)
    if not lengths:
        raise ConfigError("eval.attention.lengths must be null or list at least one document length")
    for n in lengths:
        _pos_int(n, "attention.lengths[]")
    if len(set(lengths)) != len(lengths):
        raise ConfigError(f"eval.attention.lengths lists a length twice: {lengths}")
    data_lengths = _get(_get(full_cfg, "data"), "eval_lengths")
    if data_lengths is not None:
        missing = [n for n in lengths if n not in list(data_lengths)]
        if missing:
            raise ConfigError(f"eval.attention.lengths: {missing} not in data.eval_lengths={list(data_lengths)} "
                              "(no recall_<N> split is built for them); pick lengths from data.eval_lengths")


def attention_lengths(cfg: Any) -> list[int]:
    """eval.attention.lengths, or (null) every data.eval_lengths (the memory table is by N)."""
    lengths = _get(_get(_get(cfg, "eval"), "attention"), "lengths", None)
    if lengths is not None:
        return [int(n) for n in lengths]
    return sorted({int(n) for n in _get(_get(cfg, "data"), "eval_lengths")})
