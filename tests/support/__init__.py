"""Helpers shared by the test suite: service endpoints, connections, polling, consuming."""

from __future__ import annotations

from tests.support.helpers import consume_all, pg_connect, wait_for
from tests.support.stack import Stack

__all__ = ["Stack", "consume_all", "pg_connect", "wait_for"]
