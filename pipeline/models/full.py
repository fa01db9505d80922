"""`full`: one causal attention over all N tokens (no segments): quality and cost ceiling.

With rotary positions, inputs longer than the training documents are extrapolation (the report
marks those cells); with learned positions N is capped by backbone.max_positions.
"""

from dataclasses import dataclass, field
from typing import Any, Dict

from pipeline.config.schema import MemoryConfig
from pipeline.models.base import Memory


@dataclass
class FullConfig(MemoryConfig):
    """One causal attention over all N tokens."""

    name: str = "full"
    # the ceiling stops on a plateau only: its monitor is overall recall on `val`, where the sums are ~6% of the
    # answers, so 0.98 was reached at step 1,500 with sums at 0.76-0.83 (numeric_learnable needs 0.90;
    # docs/RECIPE.md, "Early stopping")
    recipe: Dict[str, Any] = field(default_factory=lambda: {"stop_at": None})
    whole_sequence = True  # MemoryLM reads the document as a single segment of N tokens


class FullMemory(Memory):
    Config = FullConfig


MEMORY = FullMemory
