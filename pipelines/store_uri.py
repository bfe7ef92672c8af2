"""An MLflow tracking URI checked without MLflow and without connecting: what ``snakemake -n``
can refuse before anything is queued (an unknown scheme, a file that is not a database).

Opening, creating and writing stores: :mod:`pipelines.tracking.store`.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.errors import UserError


#: URI schemes MLflow's tracking client writes to (``postgresql+psycopg2`` and the like too)
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file")
SQLITE_MAGIC = b"SQLite format 3\0"


def check_scheme(uri: str) -> None:
    """Refuse a URI no MLflow tracking store has (``foo://bar``, a bare path) in one line."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in (uri or "") else ""
    if scheme not in SCHEMES:
        raise UserError(f"tracking URI {uri!r}: expected sqlite:///FILE, postgresql://..., "
                        f"or http(s)://HOST:PORT")


def check_readable(uri: str) -> None:
    """What can be checked of a store without opening it (no connection, nothing written): its
    scheme, and that an existing ``sqlite:///FILE`` is an SQLite database. One-line UserError."""
    check_scheme(uri)
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as err:
        raise UserError(f"tracking URI {uri!r}: {path} cannot be read "
                        f"({err.strerror or err})") from None
    if head and head != SQLITE_MAGIC:
        raise UserError(f"tracking URI {uri!r}: {path} is not an SQLite database")
