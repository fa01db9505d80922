"""The study's configuration schema: every key, its type and its default, in one place (each memory's own
keys: its module, pipeline/models/<name>.py).

A leaf module (the standard library only; nothing of the package, no torch, no OmegaConf), so any
module can import it. Hydra's ConfigStore holds these classes (`register`, run by the plugin in
hydra_plugins/cmr_repro.py whenever Hydra composes, DVC's `dvc exp run -S` included), and the
YAML files under conf/ hold only what differs from them by option or profile. Choices are StrEnums:
a config file writes the plain word (`selection: learned`), which is also the member's name, so
OmegaConf checks it, and code may compare a field with either the member or the word.
Cross-field checks live in pipeline/config/checks.py; pipeline/config/load.py composes and validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from typing import Any, ClassVar, Dict, List, Optional, get_type_hints


# ---- choices ---------------------------------------------------------------------------------------
# Functional StrEnums: a member's name is its value, the word a config file writes.
Filler = StrEnum("Filler", "synthetic hf local")
LocalFormat = StrEnum("LocalFormat", "auto text json parquet")
DocKind = StrEnum("DocKind", "recall numeric dialogue")
EvalFacts = StrEnum("EvalFacts", "spread first_segment")
Positions = StrEnum("Positions", "rotary learned")
QueryType = StrEnum("QueryType", "far local numeric dialogue")
ProgressBar = StrEnum("ProgressBar", "tqdm rich none")
Task = StrEnum("Task", "recall rare numeric dialogue overhead")
Device = StrEnum("Device", "cpu cuda auto")
WandbMode = StrEnum("WandbMode", "offline online disabled")
CIMethod = StrEnum("CIMethod", "percentile bca basic")

# Lightning's own names, passed through to its Trainer: checked strings (pipeline/config/checks.py), not StrEnums
# (a precision is no identifier, "32-true"), limited to what this pipeline supports.
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")
PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "64", "64-true")


def choices(enum: type[StrEnum]) -> tuple[str, ...]:
    """The words a config file may write for this choice, in declaration order."""
    return tuple(m.value for m in enum)


def from_dict(cls: type, d: dict) -> Any:
    """cls(**d) with each choice word as its StrEnum member; a word that is no choice stays a string, for the
    checks (pipeline/config/checks.py) to name. The keys must be fields of cls (callers say which are not)."""
    kinds = get_type_hints(cls)  # the annotations are strings under `from __future__ import annotations`
    return cls(**{k: _as_choice(kinds[k], v) for k, v in d.items()})


def to_dict(obj: Any) -> Any:
    """A config object as plain containers (dict, list, str, int, float, bool, None), a choice as its word:
    what a checkpoint, a worker or wandb gets. The field order is the schema's, as OmegaConf writes it."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _as_choice(kind: Any, value: Any) -> Any:
    if isinstance(kind, type) and issubclass(kind, StrEnum) and isinstance(value, str) and value in choices(kind):
        return kind(value)
    return value


# ---- data ------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Generator of documents with planted facts (METHOD.md section 3). The defaults are the default study's; the
    ci and paper profiles override the sizes."""

    # --- filler text ---
    filler: Filler = Filler.synthetic
    hf_name: Optional[str] = None  # e.g. "wikitext" (filler=hf)
    hf_config: Optional[str] = None  # e.g. "wikitext-2-raw-v1"
    hf_split: str = "train"
    text_column: str = "text"  # hf and local json/parquet
    local_files: List[str] = field(default_factory=list)  # filler=local
    local_format: LocalFormat = LocalFormat.auto  # auto: by extension
    filler_max_words: int = 2_000_000  # corpus words read (hf/local)
    filler_vocab_size: int = 512  # synthetic vocabulary size, or top-N corpus words
    # a pretrained LM's tokenizer (an AutoTokenizer folder or hub name): documents in that LM's own tokens, every
    # study word one LM token (pipeline/data/lm_tokens.py); null: the study's own word-level tokenizer
    tokenizer: Optional[str] = None
    zipf_a: float = 1.1  # synthetic word-frequency exponent
    # --- seeds (training vs evaluation documents come from different seeds) ---
    vocab_seed: int = 0
    train_seed: int = 0
    eval_seed: int = 1
    # --- token sets ---
    n_entities: int = 64
    n_common_values: int = 64
    n_variables: int = 16
    # numbers are tokens 0..max_number; sums stay in range. 9: sums of two recalled numbers are learnable at this
    # size (full on val 0.85 with 0-9, 0.77 with 0-19, chance with 0-99; docs/RECIPE.md, "The numeric recipe")
    max_number: int = 9
    rare_counts: List[int] = field(default_factory=lambda: [10, 50, 100, 500, 1000])  # training occurrences per class
    rare_tokens_per_class: int = 2
    max_rare_fraction: float = 0.5  # at most this share of training fact slots hold rare values
    # --- templates (placeholders {E} entity, {V} value, {X}/{Y} variable, {N} number) ---
    fact_template: str = "is {E} {V} ."  # value right after its entity (one-hop recall)
    query_template: str = "? is {E}"
    num_fact_template: str = "is {X} {N} ."  # a number stated like a fact, so the recall binding serves it
    num_query_template: str = "sum {X} {Y}"  # the answer at the second variable (docs/RECIPE.md, "The numeric recipe")
    speakers: List[str] = field(default_factory=lambda: ["A:", "B:"])
    # --- training documents (train / val splits) ---
    segment_len: int = 16  # = backbone.window (conf/data links them): training documents are whole segments
    n_train_docs: int = 20000
    n_val_docs: int = 200
    train_min_segments: int = 2
    train_max_segments: int = 6  # the short pool: 2-6 segments (96 tokens), where every fact, sum and rare value is taught
    # long training documents, an extra pool (common values only, their own seed stream) that the curriculum
    # reaches only once it allows this many segments: banks overflow in them, so the scorer learns to rank facts
    # above filler (32-segment documents overflow cmr's banks 4x; docs/RECIPE.md, "The long pool of training documents")
    n_train_long_docs: int = 10000
    train_long_segments: int = 32
    # facts in early segments asked in the last one, as many as fit (2 in 2-segment documents): cmr's recall falls
    # with the number of facts a document holds, so it must learn to tell several apart (docs/RECIPE.md, "The short
    # convolution, k, facts and steps")
    n_far_facts: int = 4
    n_distractor_facts: int = 0  # recall docs: facts in early segments never asked (as many as fit)
    local_pairs_per_segment: int = 1  # fact + query inside the same segment, every segment
    # numeric 0.15: full's sums 0.96-1.00 by 3,000 steps (0.1: 0.79 on one seed; docs/RECIPE.md, "The task mix")
    train_mix: Dict[str, float] = field(default_factory=lambda: {"recall": 0.8, "numeric": 0.15, "dialogue": 0.05})
    # --- long validation (val_long): evaluation-like recall documents from the training seed family,
    # scored during training and used to select checkpoints (the short val split cannot see long-document failure)
    # checkpoints are selected on these: at 256-512 tokens banks overflow 2-4x, too little to see the miss 2,048 shows
    val_long_lengths: List[int] = field(default_factory=lambda: [256, 512, 2048])
    n_val_long_docs: int = 50  # per length
    # --- evaluation documents ---
    eval_lengths: List[int] = field(default_factory=lambda: [500, 1000, 1500, 2000, 2500])
    eval_facts: EvalFacts = EvalFacts.spread  # recall facts spread over the document, or all in segment 0
    n_eval_docs: int = 50  # per recall_<N> / numeric_<N> / dialogue_<T> split
    n_eval_facts: int = 8  # recall facts per eval doc (all asked at the end)
    n_eval_num_vars: int = 8  # numeric vars per eval doc (queried in pairs: n/2 queries)
    rare_eval_length: int = 500
    n_rare_docs: int = 100
    dialogue_turns: List[int] = field(default_factory=lambda: [2, 4, 6, 8, 10])
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


# ---- models ----------------------------------------------------------------------------------------
@dataclass
class BackboneConfig:
    """The decoder shared by every variant (pre-LN, causal SDPA attention, GELU MLP)."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    window: int = 16  # W: tokens per segment for window/xl/cmr
    positions: Positions = Positions.rotary  # learned: segment-relative for window/xl/cmr
    rope_base: float = 10000.0
    dropout: float = 0.0
    max_positions: int = 4096  # size of the learned position table: with positions=learned, `full`'s longest input
    tie_embeddings: bool = True
    # causal depthwise short convolution (taps) on each attention input; 0: none. Associative recall learns in
    # hundreds of steps with it, not tens of thousands (docs/RECIPE.md, "The short convolution, k, facts and steps")
    conv_kernel: int = 4
    # a pretrained Hugging Face causal LM (a save_pretrained folder or a hub name) as the frozen backbone in
    # place of the decoder above (whose sizes then only size `cmr-repro hf-pretrain`); null: the decoder.
    # window and cmr only (conf/experiment/hf_cmr.yaml)
    hf_model: Optional[str] = None


@dataclass
class MemoryConfig:
    """Base of every memory's config. Each memory declares its own subclass, checks and class in its module
    (pipeline/models/<name>.py, listed in pipeline/models/registry.py); `name` picks the memory. The class
    flags say what the study must know of a memory without building it."""

    name: str = "window"
    # train keys this memory trains with in place of the study's (its own recipe, found on validation splits with
    # the same search budget as every other memory: docs/MEMORIES.md); empty: the study's `train` as it is
    recipe: Dict[str, Any] = field(default_factory=dict)
    spans_document: ClassVar[bool] = False  # its state reaches any earlier token: checkpoints chosen on val_long
    whole_sequence: ClassVar[bool] = False  # reads the document as one segment: positions must cover every input
    on_pretrained: ClassVar[bool] = False  # pipeline/models/hf.py can attach it to a pretrained Hugging Face LM

    def check(self, backbone: "BackboneConfig") -> None:
        """Cross-field checks against the backbone; raise ConfigError naming `models.<name>.<key>`."""


# ---- training --------------------------------------------------------------------------------------
@dataclass
class CurriculumStage:
    """Until optimizer step `until_step` (exclusive; null = to the end), train on documents of at
    most `max_segments` segments. Train short first: memory has to work across one boundary before
    it can work across three."""

    until_step: Optional[int] = None
    max_segments: int = 2


@dataclass
class TrainConfig:
    """AdamW, linear warm-up then cosine decay to lr * min_lr_ratio, norm clipping; validation and checkpoints
    every val_check_interval steps."""

    # optimisation
    batch_size: int = 64
    # tokens per batch at most (null = always batch_size): a batch of long documents holds fewer of them, so the
    # long pool of training documents costs about what a short batch costs (docs/RECIPE.md, "The cost cut")
    # (a long batch: 8 documents of 512 tokens; 64-document long batches cost the study 84 min)
    max_batch_tokens: Optional[int] = 4096
    lr: float = 3.0e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.01  # applied to matrices only (not biases / norms)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1.0e-8  # AdamW epsilon
    grad_clip: float = 1.0  # Trainer.gradient_clip_val (norm); 0 = off
    # a multiple of val_check_interval; the cap every memory shares (early stopping ends most runs before it).
    # With the long pool from step 1,000, cmr's val_long far recall is 0.97 at 1,500 and 0.99 at 2,000 (seed 0)
    max_steps: int = 3000
    lm_loss_weight: float = 0.0  # weight of next-token loss on all tokens, added to the answer loss
    # weight of each query type's answers in the answer loss (a weighted mean; types not named weigh 1; all 1:
    # the plain mean): the types are far from equally common (numeric sums are ~6% of the default study's answers)
    answer_loss_weights: Dict[str, float] = field(default_factory=lambda: {q.value: 1.0 for q in QueryType})
    # curriculum over training documents' n_segments; empty = all documents from step 0. 2-segment documents until
    # the binding is learned, then the short pool and the 32-segment long pool (docs/RECIPE.md, "Why the recipe changed";
    # from step 1,000 rather than 1,500: "A shared recipe for eight memories")
    curriculum: List[CurriculumStage] = field(
        default_factory=lambda: [
            CurriculumStage(until_step=1000, max_segments=2),
            CurriculumStage(until_step=None, max_segments=32),
        ]
    )
    # validation / checkpoints
    val_check_interval: int = 500  # optimizer steps between validations (and checkpoints); 8 per run: the time budget
    limit_val_batches: float = 1.0  # int-valued = number of batches, fraction = share of val batches
    val_batch_size: int = 64
    # best.ckpt = max of this. auto: what each variant can reach: far recall on val_long (evaluation-like long
    # documents, training seed family) for the document-spanning memories (cmr), overall recall on val for the
    # rest (pipeline/config/train.py resolve_monitor); or any {val,val_long}/recall[_far|_local|_numeric|_dialogue]
    monitor: str = "auto"
    target_recall: float = 0.9  # metrics.json steps_to_90: first validation where the monitored metric >= this
    # early stopping (Lightning's EarlyStopping on the monitor, checked at each validation from stop_min_steps on:
    # earlier validations count neither for the target nor for the plateau's patience): a run stops once the monitor reaches stop_at (it has learned the task; null: never), or once
    # it has not risen by stop_min_delta for stop_patience validations (it has stopped learning; 0: never). The
    # best checkpoint is chosen as without it: a stopped run is the same run cut short (docs/RECIPE.md, "Early
    # stopping"). 1,000 steps of 2-segment documents, then at least 500 of long ones before anything may stop.
    # Patience 1: on the study's curves a second validation without a rise bought no memory but `rmt` anything
    # (rmt keeps 2 in its own recipe; docs/RECIPE.md, "Early stopping").
    stop_at: Optional[float] = 0.98
    stop_patience: int = 1
    stop_min_delta: float = 0.005
    stop_min_steps: int = 1500
    num_sanity_val_steps: int = 0
    # runtime
    threads: int = 1  # torch.set_num_threads; 1 measured fastest for tiny models on 2 cores
    accelerator: str = "cpu"  # one of ACCELERATORS
    devices: int = 1  # processes per node; > 1 with strategy ddp: batch_size stays the global batch
    num_nodes: int = 1
    # with devices x num_nodes processes, batch_size is the global batch: each rank trains on its own equal share
    # of the one-process batch and validates every world-th batch (summed over ranks)
    strategy: str = "auto"  # one of STRATEGIES
    precision: str = "32-true"  # one of PRECISIONS
    deterministic: bool = True
    log_every_n_steps: int = 50
    progress_bar: ProgressBar = ProgressBar.tqdm
    progress_refresh_rate: int = 25
    resume: bool = True  # continue from checkpoints/last.ckpt when present


# ---- evaluation ------------------------------------------------------------------------------------
@dataclass
class OverheadConfig:
    """Table III: inference cost. The paper's protocol: batch 1, no grad, warm-up, median of repeats."""

    lengths: List[int] = field(default_factory=lambda: [500, 1000, 1500, 2000, 2500])
    warmup: int = 2
    repeats: int = 20  # median of 20 timed forwards per N (5 was noisy at ~10 us/token)
    batch_size: int = 1
    # Peak memory is measured in a separate (untimed) forward, since tracking slows the ops down.
    measure_memory: bool = True


@dataclass
class AttentionConfig:
    """The attention analysis (METHOD.md section 4, row `attention`): a few recall documents per
    length, batch 1, attention maps read at the query positions. Cheap on purpose."""

    lengths: Optional[List[int]] = None  # each must be in data.eval_lengths; null: all of them
    n_docs: int = 4  # first documents of each recall_<N> split
    max_queries: Optional[int] = None  # first queries of each document; null = all of them


@dataclass
class EvalConfig:
    """The evaluation stage: every task but the overhead (its own stage) and the attention analysis (its own)."""

    batch_size: int = 16  # documents per forward (same-length documents only)
    threads: int = 1  # torch.set_num_threads: fixed, so ms/token is comparable
    device: Device = Device.cpu  # auto: cuda when available
    tasks: List[str] = field(default_factory=lambda: [t.value for t in Task if t != Task.overhead])  # Task words
    max_docs_per_split: Optional[int] = None  # null = every document of each split
    rare_buckets: Optional[List[int]] = None  # Table IV buckets (training-split counts); null = data.rare_counts
    overhead: OverheadConfig = field(default_factory=OverheadConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)


# ---- logging and report ----------------------------------------------------------------------------
@dataclass
class WandbConfig:
    enabled: bool = True
    mode: WandbMode = WandbMode.offline  # offline by default: no network needed, `wandb sync` later
    project: str = "cmr-repro"
    entity: Optional[str] = None
    group: Optional[str] = None  # null = the profile name
    tags: List[str] = field(default_factory=list)
    init_timeout: float = 10.0  # seconds an online run may take to reach the server before it logs offline


@dataclass
class LoggerConfig:
    """Experiment tracking: a Weights & Biases run (offline by default) and CSV logs for every training run."""

    wandb: WandbConfig = field(default_factory=WandbConfig)
    csv: bool = True


@dataclass
class ReportConfig:
    """The report stage: confidence intervals, tests, and the validity checks' thresholds."""

    ci_level: float = 0.95
    ci_method: CIMethod = CIMethod.percentile  # scipy.stats.bootstrap's method
    n_resamples: int = 2000
    seed: int = 0
    alpha: float = 0.05  # significance level for Holm-corrected McNemar p-values
    # validity checks (pipeline/report/checks.py), each read per seed
    ceiling_threshold: float = 0.95  # full's far recall within its training length (val)
    learned_threshold: float = 0.90  # <memory>_learned: far recall at training length (val), every seed
    long_threshold: float = 0.95  # <memory>_long: far recall on the long validation split (val_long), every seed
    xl_near_threshold: float = 0.90  # xl one segment back (inside its cache)
    numeric_threshold: float = 0.90  # full's sum accuracy on val: the operation is learnable
    binding_margin: float = 0.05  # cmr right among the document's values by this much over a uniform pick
    chance_margin: float = 0.05  # window far, xl beyond its reach: accuracy <= chance + margin
    chance: Optional[float] = None  # None: 1 / number of distinct answers in the recall predictions
    # claim (2) verdict: CMR's inference overhead is "small" if cmr/window ms/token <= this at every N
    # (the paper reports +5-11%, i.e. ratios 1.07-1.11; 1.15 leaves a little room for timing noise)
    overhead_small_ratio: float = 1.15


# ---- where memories break --------------------------------------------------------------------------
@dataclass
class StressConfig:
    """Where memories break (docs/STRESS.md): evaluation-only documents past the study's, read by every trained run
    (the stress stages) - more far facts per document (load), longer documents (length), and an entity stated
    twice with different values (update: the later statement is right). Drawn from their own seed with the
    study's vocabulary, so no split of data/ changes."""

    seed: int = 2  # their own seed stream (data.train_seed 0 and data.eval_seed 1 are the study's)
    threshold: float = 0.90  # effective length / capacity: the longest N / largest F with far recall >= this
    # load: documents of load_length tokens with F far facts each (distinct entities: F <= data.n_entities), spread
    # over the document and all asked at the end (zoology's MQAR sweeps the number of pairs the same way)
    load_facts: List[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    load_length: int = 2500
    n_load_docs: int = 20
    # length: documents of data.n_eval_facts facts past the paper's 2,500 tokens (linear-cost memories; `full`
    # where it fits, extrapolating: it trains on 512)
    lengths: List[int] = field(default_factory=lambda: [5000, 10000, 20000])
    n_length_docs: int = 8
    full_max_length: int = 10000  # `full` is read up to here (its attention is quadratic in N)
    # update: one entity stated twice with different values `gap` segments apart, asked at the end (the later
    # value is right); beside it data.n_eval_facts - 1 ordinary facts
    update_gaps: List[int] = field(default_factory=lambda: [1, 4, 16, 48])
    update_length: int = 1000
    n_update_docs: int = 20
    batch_size: int = 8  # documents per forward
    # state size: the largest load split read again with each listed memory's state resized at evaluation, the
    # trained weights unchanged (zoology's accuracy against state size). Only settings no weight's shape depends on
    # (cmr's bank slots, memorizing's store, xl's cache); rmt's memory tokens and armt's and gdn's key widths are
    # weight shapes, so those memories appear at their trained size alone. {variant: {memory key: [values]}}
    state_sizes: Dict[str, Dict[str, List[int]]] = field(default_factory=lambda: {
        "xl": {"mem_len": [8, 32, 64]}, "memorizing": {"store": [64, 128, 512, 1024]},
        "cmr": {"capacity": [8, 16, 64, 128]}})


# ---- the study -------------------------------------------------------------------------------------
@dataclass
class StudyConfig:
    """Which variants and seeds the study trains and evaluates (the DVC matrix)."""

    # every memory of pipeline/models/registry.py NAMES, in its order (cmr last)
    variants: List[str] = field(default_factory=lambda: ["window", "xl", "full", "rmt", "armt", "memorizing", "gdn",
                                                         "cmr"])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    # Processes that train one variant's seeds side by side (1 torch thread each): on 2 cores two runs at once
    # give ~1.6x the throughput of one; 3 leave no seed running alone at the end. Changes no result (not a DVC
    # param of the stages).
    jobs: int = 3


@dataclass
class SweepConfig:
    """The job a Hydra sweep runs (`python -m pipeline.studies.sweep -m sweep.variant=window,cmr`)."""

    variant: str = "cmr"
    seed: int = 0


@dataclass
class PathsConfig:
    data_dir: str = "data"
    experiments_dir: str = "experiments"
    results_dir: str = "results"


@dataclass
class RootConfig:
    """The whole composed config (params.yaml). `models` maps a variant to its memory's config: a mapping here,
    the memory's own dataclass after pipeline.models.registry.typed_models."""

    profile_name: str = "default"
    study: StudyConfig = field(default_factory=StudyConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    models: Dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    stress: StressConfig = field(default_factory=StressConfig)


def register(store: Any) -> None:
    """Put the schema into Hydra's ConfigStore (`store`: ConfigStore.instance()) as `cmr_repro_schema`, first in
    conf/config.yaml's defaults (each memory's own schema: pipeline.models.registry.register)."""
    store.store(name="cmr_repro_schema", node=RootConfig)
