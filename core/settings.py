"""Base class for every config model: strict, immutable, documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Unknown keys are errors; values are validated as written (no silent coercion of types)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
