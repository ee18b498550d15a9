"""cdc-connector, the application: CLI, config root, pipeline, HTTP ops. See docs/architecture.md."""

from __future__ import annotations

from core import __version__

__all__ = ["__version__"]
