"""Durable tables of the stream and workflow engines (trusted), chosen by the store URL.

The engines keep their tables next to the faceted store: in the same SQLite file
(``sqlite.py``), or in the same PostgreSQL database and schema (``postgres.py``), so that
several processes or machines can run the engines on one database. Their SQL lives in those
two modules; ``base.py`` holds the interface, :class:`EngineDB`, and the steps that are the
same on both backends (run over each backend's SQL, :class:`EngineSQL`).

>>> db = EngineDB.open("postgresql://app@db.internal:5432/trapeze")   # or open_engine_db(url)

Labels are a column of every row, out of band: nothing in a record or an execution's data can
change the label the engines attach to it.
"""

from trapeze.runtime.engine_store.base import (
    ClaimLost,
    EngineDB,
    Lane,
    StoredRecord,
    dumps,
    exec_claim,
    lane_claim,
    loads,
    open_engine_db,
)

__all__ = [
    "ClaimLost",
    "EngineDB",
    "Lane",
    "StoredRecord",
    "dumps",
    "exec_claim",
    "lane_claim",
    "loads",
    "open_engine_db",
]
