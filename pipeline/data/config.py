"""DataConfig: every knob of the document generator, with small fast defaults (ci-like).

Profiles override the sizes. No torch import: `report` and `--help` must start fast.
`validate` does the cross-field checks that a type schema cannot (seeds disjoint, sizes, lists);
pipeline/data/checks.py adds a dry run of the document layouts (templates well formed, planted facts fit a
segment, rare counts fit the training split), so this module imports nothing of the generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.config_access import cfg_path
from pipeline.errors import ConfigError

FILLER_SOURCES = ("synthetic", "hf", "local")
LOCAL_FORMATS = ("auto", "text", "json", "parquet")
DOC_KINDS = ("recall", "numeric", "dialogue")
EVAL_FACTS = ("spread", "first_segment")


@dataclass
class DataConfig:
    """Generator of documents with planted facts (METHOD.md section 3)."""

    # --- filler text ---
    filler: str = "synthetic"  # synthetic | hf | local
    hf_name: Optional[str] = None  # e.g. "wikitext" (filler=hf)
    hf_config: Optional[str] = None  # e.g. "wikitext-2-raw-v1"
    hf_split: str = "train"
    text_column: str = "text"  # hf and local json/parquet
    local_files: list[str] = field(default_factory=list)  # filler=local
    local_format: str = "auto"  # auto (by extension) | text | json | parquet
    filler_max_words: int = 2_000_000  # corpus words read (hf/local)
    filler_vocab_size: int = 512  # synthetic vocabulary size, or top-N corpus words
    zipf_a: float = 1.1  # synthetic word-frequency exponent
    # --- seeds (training vs evaluation documents come from different seeds) ---
    vocab_seed: int = 0
    train_seed: int = 0
    eval_seed: int = 1
    # --- token sets ---
    n_entities: int = 64
    n_common_values: int = 64
    n_variables: int = 16
    max_number: int = 99  # numbers are tokens 0..max_number; sums stay in range
    rare_counts: list[int] = field(default_factory=lambda: [10, 50, 100, 500, 1000])
    rare_tokens_per_class: int = 2
    max_rare_fraction: float = 0.5  # at most this share of training fact slots hold rare values
    # --- templates (placeholders {E} entity, {V} value, {X}/{Y} variable, {N} number) ---
    fact_template: str = "is {E} {V} ."  # value right after its entity (one-hop recall)
    query_template: str = "? is {E}"
    num_fact_template: str = "is {X} {N} ."  # a number stated like a fact, so the recall binding serves it
    num_query_template: str = "sum {X} {Y}"  # the answer at the second variable (README: the numeric recipe)
    speakers: list[str] = field(default_factory=lambda: ["A:", "B:"])
    # --- training documents (train / val splits) ---
    segment_len: int = 16  # = backbone.window (yaml interpolates it)
    n_train_docs: int = 4000
    n_val_docs: int = 200
    train_min_segments: int = 2
    train_max_segments: int = 4
    # long training documents, an extra pool (common values only, their own seed stream) that the curriculum
    # reaches only once it allows this many segments: banks overflow in them, so the scorer learns to rank
    n_train_long_docs: int = 0
    train_long_segments: int = 16
    n_far_facts: int = 2  # facts in early segments asked in the last one
    n_distractor_facts: int = 0  # recall docs: facts in early segments never asked (as many as fit)
    local_pairs_per_segment: int = 1  # fact + query inside the same segment, every segment
    train_mix: dict[str, float] = field(
        default_factory=lambda: {"recall": 0.7, "numeric": 0.15, "dialogue": 0.15}
    )
    # --- long validation (val_long): evaluation-like recall documents from the training seed family,
    # scored during training and used to select checkpoints (the short val split cannot see long-document failure)
    val_long_lengths: list[int] = field(default_factory=lambda: [256, 512])
    n_val_long_docs: int = 50  # per length
    # --- evaluation documents ---
    eval_lengths: list[int] = field(default_factory=lambda: [500, 1000, 1500, 2000, 2500])
    eval_facts: str = "spread"  # recall facts: spread (stratified over the document) | first_segment (all in segment 0)
    n_eval_docs: int = 20  # per recall_<N> / numeric_<N> / dialogue_<T> split
    n_eval_facts: int = 8  # recall facts per eval doc (all asked at the end)
    n_eval_num_vars: int = 8  # numeric vars per eval doc (queried in pairs: n/2 queries)
    rare_eval_length: int = 500
    n_rare_docs: int = 50
    dialogue_turns: list[int] = field(default_factory=lambda: [2, 4, 6, 8, 10])
    dialogue_turn_len: int = 64  # tokens per turn (speaker tag + chit-chat + facts/queries)
    n_dialogue_facts: int = 2
    # --- checks ---
    verify_docs: int = 32  # docs per split round-tripped through the saved tokenizer

    @property
    def longest_train_segments(self) -> int:
        """Segments of the longest training document: the long pool's when it has documents."""
        if self.n_train_long_docs > 0:
            return max(self.train_max_segments, self.train_long_segments)
        return self.train_max_segments


def keys() -> list[str]:
    return [f.name for f in dataclasses.fields(DataConfig)]


def as_data_config(obj: Any) -> DataConfig:
    """DataConfig from a DataConfig, a dict / DictConfig of its keys, or a whole config with `.data`."""
    if isinstance(obj, DataConfig):
        return obj
    from omegaconf import DictConfig, OmegaConf

    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    if not isinstance(obj, dict):
        raise ConfigError(f"data: expected a mapping of DataConfig keys, got {type(obj).__name__}")
    if "data" in obj and isinstance(obj["data"], dict):
        obj = obj["data"]
    unknown = sorted(set(obj) - set(keys()))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key; allowed keys: {', '.join(keys())}")
    return DataConfig(**obj)


def validate(data_cfg: Any, full_cfg: Any = None) -> DataConfig:
    """Cross-field checks of the fields; raise ConfigError naming the key and the allowed values.

    Accepts `validate(cfg.data, cfg)` (contract) or `validate(cfg)` with the whole config.
    """
    if full_cfg is None and data_cfg is not None and not isinstance(data_cfg, DataConfig):
        try:
            if "data" in data_cfg:
                full_cfg, data_cfg = data_cfg, data_cfg["data"]
        except TypeError:
            pass
    c = as_data_config(data_cfg)
    _check_sources(c, full_cfg)
    _check_sizes(c)
    _check_lists(c)
    return c


def _check_sources(c: DataConfig, full_cfg: Any) -> None:
    """Where filler text comes from, the seed families, and the segment length against the backbone."""
    if c.filler not in FILLER_SOURCES:
        raise ConfigError(f"data.filler: unknown filler source '{c.filler}'; allowed: {', '.join(FILLER_SOURCES)}")
    if c.filler == "hf" and not c.hf_name:
        raise ConfigError("data.hf_name: required when data.filler=hf (e.g. wikitext)")
    if c.filler == "local" and not c.local_files:
        raise ConfigError("data.local_files: required (a non-empty list of paths) when data.filler=local")
    if c.eval_facts not in EVAL_FACTS:
        raise ConfigError(f"data.eval_facts: unknown '{c.eval_facts}'; allowed: {', '.join(EVAL_FACTS)}")
    if c.local_format not in LOCAL_FORMATS:
        raise ConfigError(f"data.local_format: unknown '{c.local_format}'; allowed: {', '.join(LOCAL_FORMATS)}")
    if c.train_seed == c.eval_seed:
        raise ConfigError(
            f"data.train_seed and data.eval_seed must differ (both {c.train_seed}): "
            "evaluation documents must come from a seed disjoint from training"
        )
    window = cfg_path(full_cfg, "backbone.window")
    if window is not None and int(window) != c.segment_len:
        raise ConfigError(
            f"data.segment_len={c.segment_len} must equal backbone.window={window} "
            "(training documents are whole segments)"
        )


def _check_sizes(c: DataConfig) -> None:
    """Counts and sizes: positive where they must be, and enough entities and variables for a document."""
    positive = ["filler_vocab_size", "n_entities", "n_common_values", "n_variables", "segment_len",
                "n_train_docs", "n_val_docs", "train_min_segments", "n_eval_docs", "n_eval_facts",
                "rare_eval_length", "n_rare_docs", "n_val_long_docs", "dialogue_turn_len", "n_dialogue_facts", "max_number",
                "rare_tokens_per_class", "filler_max_words"]
    for k in positive:
        if getattr(c, k) < 1:
            raise ConfigError(f"data.{k}: must be >= 1, got {getattr(c, k)}")
    for k in ["n_far_facts", "n_distractor_facts", "local_pairs_per_segment", "verify_docs", "n_train_long_docs"]:
        if getattr(c, k) < 0:
            raise ConfigError(f"data.{k}: must be >= 0, got {getattr(c, k)}")
    if c.train_max_segments < c.train_min_segments:
        raise ConfigError(
            f"data.train_max_segments ({c.train_max_segments}) must be >= data.train_min_segments "
            f"({c.train_min_segments})"
        )
    if c.n_train_long_docs and c.train_long_segments <= c.train_max_segments:
        raise ConfigError(
            f"data.train_long_segments ({c.train_long_segments}) must be > data.train_max_segments "
            f"({c.train_max_segments}) when data.n_train_long_docs > 0"
        )
    if c.n_far_facts > 0 and c.train_min_segments < 2:
        raise ConfigError("data.train_min_segments: must be >= 2 when data.n_far_facts > 0 (facts and queries in different segments)")
    if not 0.0 <= c.max_rare_fraction <= 1.0:
        raise ConfigError(f"data.max_rare_fraction: must be in [0, 1], got {c.max_rare_fraction}")
    if c.n_eval_num_vars < 2 or c.n_eval_num_vars % 2:
        raise ConfigError(f"data.n_eval_num_vars: must be an even number >= 2 (vars are queried in pairs), got {c.n_eval_num_vars}")
    if c.n_variables < max(c.n_eval_num_vars, 2 * max(1, c.n_far_facts // 2) + 2):
        raise ConfigError(f"data.n_variables ({c.n_variables}) must be >= data.n_eval_num_vars ({c.n_eval_num_vars}) and the vars a training doc needs")
    need_entities = max(c.n_eval_facts, c.n_dialogue_facts,
                        c.n_far_facts + c.n_distractor_facts + c.local_pairs_per_segment * c.longest_train_segments)
    if c.n_entities < need_entities:
        raise ConfigError(f"data.n_entities ({c.n_entities}) must be >= {need_entities}: entities are unique within a document")


def _check_lists(c: DataConfig) -> None:
    """Rare counts, speakers, the training mix and the length lists."""
    if any(int(n) < 1 or int(n) % 2 for n in c.rare_counts):
        raise ConfigError(
            f"data.rare_counts: each count must be a positive even number (every occurrence is a fact "
            f"plus its query), got {list(c.rare_counts)}"
        )
    if len(c.speakers) < 2 or any(len(s.split()) != 1 for s in c.speakers):
        raise ConfigError(f"data.speakers: need >= 2 single-word speaker tags, got {list(c.speakers)}")
    if c.max_number < 1:
        raise ConfigError("data.max_number: must be >= 1")
    mix = dict(c.train_mix)
    bad = sorted(set(mix) - set(DOC_KINDS))
    if bad:
        raise ConfigError(f"data.train_mix.{bad[0]}: unknown document kind; allowed: {', '.join(DOC_KINDS)}")
    if any(float(v) < 0 for v in mix.values()) or sum(float(v) for v in mix.values()) <= 0:
        raise ConfigError(f"data.train_mix: weights must be >= 0 with a positive sum, got {mix}")
    for key in ("eval_lengths", "val_long_lengths"):
        lengths = list(getattr(c, key))
        if not lengths or sorted(set(lengths)) != sorted(lengths):
            raise ConfigError(f"data.{key}: must be a non-empty list of distinct lengths, got {lengths}")
    if sorted(set(c.dialogue_turns)) != sorted(c.dialogue_turns) or any(t < 2 for t in c.dialogue_turns):
        raise ConfigError(f"data.dialogue_turns: must be distinct integers >= 2, got {list(c.dialogue_turns)}")
