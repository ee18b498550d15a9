"""Errors of the transform chain.

Bad options (and options that do not fit a record's schema) are `ConfigError`s naming the transform
(`transforms[2] (mask)`) and the option. A value a transform cannot convert at run time is a
`TransformError`: a poison message (the sink can dead-letter it; the source stops).
"""

from __future__ import annotations

from core.errors import ConfigError, PoisonMessageError

__all__ = ["ConfigError", "TransformError", "option_error"]


class TransformError(PoisonMessageError):
    """A record's value cannot be transformed (a string that is not a number for `cast`, ...)."""


def option_error(label: str, option: str, problem: str, *, hint: str | None = None) -> ConfigError:
    """`transforms[2] (mask): option `fields`: <problem>`."""
    return ConfigError(f"{label}: option `{option}`: {problem}", hint=hint)
