"""Single-message transforms: the contract (`Transform`, `TransformChain`), the config and `build_chain`."""

from __future__ import annotations

from transforms.base import Transform, TransformChain
from transforms.config import TransformsBySide, TransformSpec
from transforms.registry import build_chain

__all__ = ["Transform", "TransformChain", "TransformSpec", "TransformsBySide", "build_chain"]
