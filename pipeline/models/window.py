"""`window`: each segment of W tokens sees only itself; nothing is carried (the paper's baseline)."""

from pipeline.models.base import Memory


class WindowMemory(Memory):
    """The base Memory already reads each segment alone; this names it."""
