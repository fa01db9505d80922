"""`full`: one causal attention over all N tokens (no segments): quality and cost ceiling.

With rotary positions, inputs longer than the training documents are extrapolation (the report
marks those cells); with learned positions N is capped by backbone.max_positions.
"""

from dataclasses import dataclass

from pipeline.config.schema import MemoryConfig
from pipeline.models.base import Memory


@dataclass
class FullConfig(MemoryConfig):
    """One causal attention over all N tokens."""

    name: str = "full"
    whole_sequence = True  # MemoryLM reads the document as a single segment of N tokens


class FullMemory(Memory):
    Config = FullConfig


MEMORY = FullMemory
