"""Per-record pickles kept between snapshots (the stateful stages' epoch snapshots).

Bytewax 0.21 asks every stateful step for a snapshot at the end of every epoch, with
or without recovery. The customer and effects stages keep each record's pickle and
re-pickle only the records touched since the last snapshot, so a snapshot costs
what the epoch changed, not what the group holds.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["refreshed_blobs"]


def refreshed_blobs(
    blobs: dict[str, bytes], touched: set[str], records: dict[str, Any]
) -> dict[str, bytes]:
    """Every record's pickle: ``blobs`` with the ``touched`` keys pickled again (or
    dropped when their record is gone); ``touched`` is emptied.

    When the counts disagree afterwards (records added without being marked touched,
    e.g. by a test or a tool), every record is pickled afresh.

    >>> records = {"a": [1], "b": [2]}
    >>> blobs = refreshed_blobs({}, set(records), records)
    >>> records["a"].append(3); del records["b"]
    >>> touched = {"a", "b"}
    >>> blobs = refreshed_blobs(blobs, touched, records)
    >>> {key: pickle.loads(blob) for key, blob in blobs.items()}, touched
    ({'a': [1, 3]}, set())
    >>> records["c"] = [4]  # not marked touched
    >>> sorted(refreshed_blobs(blobs, set(), records))
    ['a', 'c']
    """
    for key in touched:
        record = records.get(key)
        if record is not None:
            blobs[key] = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        else:  # erased, pruned or never kept
            blobs.pop(key, None)
    touched.clear()
    if len(blobs) != len(records):
        return {
            key: pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            for key, record in records.items()
        }
    return blobs
