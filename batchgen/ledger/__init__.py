"""The ledger: all of batchgen's state for one output folder, and every line of SQL.

``store`` opens the file and groups the writes into one transaction per flush,
``writes`` queues them, ``reads`` answers, ``schema`` migrates. See ``store``'s
docstring for what makes resume safe.
"""

from __future__ import annotations

from .reads import PAGE_SIZE
from .schema import MIGRATIONS, SCHEMA_VERSION, sql_statements
from .store import Ledger

__all__ = ["MIGRATIONS", "PAGE_SIZE", "SCHEMA_VERSION", "Ledger", "sql_statements"]
