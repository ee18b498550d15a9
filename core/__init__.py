"""Basics every layer shares: errors and their one classification, records, positions, metrics, logs, settings.

The bottom layer: it imports nothing of the project. See docs/architecture.md.
"""

from __future__ import annotations

__version__ = "0.1.0"
