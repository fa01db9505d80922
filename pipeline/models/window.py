"""`window`: each segment of W tokens sees only itself; nothing is carried (the paper's baseline)."""

from dataclasses import dataclass

from pipeline.config.schema import MemoryConfig
from pipeline.models.base import Memory


@dataclass
class WindowConfig(MemoryConfig):
    """Each segment of W tokens sees only itself."""

    name: str = "window"
    on_pretrained = True  # the pretrained LM alone, read in windows (pipeline/models/hf.py)


class WindowMemory(Memory):
    """The base Memory already reads each segment alone; this names it."""

    Config = WindowConfig


MEMORY = WindowMemory
