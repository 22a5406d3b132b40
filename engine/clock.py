"""The live clock adapter: the only place in the engine that reads the wall clock.

Everything else takes time as a parameter. In ``event`` mode (replay, demo) the
engine never calls this module; in ``wall`` mode idle key groups advance their
watermark with :func:`wall_now`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def wall_now() -> float:
    """Seconds since the epoch, now, by the machine's clock."""
    return time.time()


def wall_now_dt() -> datetime:
    """The wall clock as a timezone-aware UTC datetime (Bytewax ``notify_at``)."""
    return datetime.now(UTC)
