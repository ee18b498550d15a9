"""Config of the transform chain (`transforms:` section).

Each entry is `{type, ...options, predicate?, negate?}`; options are validated per transform type.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from connector.settings import Section


class TransformSpec(Section):
    """One transform in the chain. Options beyond `type` belong to the transform named by `type`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(description="Transform name (`unwrap`, `route`, `mask`, ...).")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TransformsBySide(Section):
    source: list[TransformSpec] = Field(default_factory=list, description="Applied before producing.")
    sink: list[TransformSpec] = Field(default_factory=list, description="Applied after decoding.")
