"""Where a sweep's Optuna study is kept: beside the MLflow tracking database, for optuna-dashboard.

MLflow and Optuna both version their tables with alembic in a table named ``alembic_version``,
so they cannot share one schema: Optuna refuses a database whose ``alembic_version`` holds
MLflow's revision ("no longer compatible with the table schema"). Hence:

- ``sqlite:///DIR/NAME.db`` (MLflow) -> ``sqlite:///DIR/NAME.optuna.db`` (Optuna), a file beside it;
- ``postgresql://.../DB`` -> the same database, schema ``optuna`` (created when missing);
- anything else (a tracking server, a file store) -> no storage: the study lives in Tune's
  searcher state only, as before.

The study is named after the sweep id, so a resumed sweep loads and continues the same study.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

#: PostgreSQL schema holding Optuna's tables inside the tracking database.
PG_SCHEMA = "optuna"
SQLITE_SUFFIX = ".optuna.db"


def study_storage_url(tracking_uri: str) -> Optional[str]:
    """Returns the SQLAlchemy URL of the sweep's Optuna storage, or None when the store is no DB."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        name = db.name[:-3] if db.name.endswith(".db") else db.name
        return f"sqlite:///{db.with_name(name + SQLITE_SUFFIX)}"
    scheme = tracking_uri.split("://", 1)[0]
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        parts = urlsplit(tracking_uri)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
        query.append(("options", f"-csearch_path={PG_SCHEMA}"))
        return urlunsplit(parts._replace(query=urlencode(query)))
    return None


def _ensure_pg_schema(tracking_uri: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
    finally:
        engine.dispose()


def ensure_study_schema(tracking_uri: str) -> None:
    """Creates the PostgreSQL schema of the study when missing (a resumed sweep whose tracking
    database was replaced: the searcher restored from Tune's state reconnects to it)."""
    url = study_storage_url(tracking_uri)
    if url is not None and not url.startswith("sqlite:"):
        _ensure_pg_schema(tracking_uri)


def study_storage(tracking_uri: str) -> Optional["RDBStorage"]:
    """Returns the Optuna RDBStorage that goes with a tracking store, or None (see module doc)."""
    url = study_storage_url(tracking_uri)
    if url is None:
        logger.info("tracking store is not a database; the Optuna study stays in Tune's "
                    "searcher state (optuna-dashboard cannot show it)")
        return None
    import optuna

    if not url.startswith("sqlite:"):
        _ensure_pg_schema(tracking_uri)
    return optuna.storages.RDBStorage(url)


def dashboard_command(tracking_uri: str) -> Optional[str]:
    """Returns the optuna-dashboard command line that shows a store's studies, or None."""
    from facefuse.tracking.store import redact_uri

    url = study_storage_url(tracking_uri)
    return None if url is None else f"optuna-dashboard '{redact_uri(url)}'"
