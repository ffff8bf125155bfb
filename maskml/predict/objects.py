"""Object ids, as every tracker and the pipeline take them."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from maskml.errors import MaskmlError


def check_object_id(value) -> int:
    """An object id is a positive integer (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MaskmlError(f"an object id must be a positive integer, got {value!r}")
    return int(value)


def ids_to_remove(ids: Iterable[int], tracked: Iterable[int]) -> set[int]:
    """The ids of remove_objects(ids), checked before anything is removed: each a tracked object."""
    if isinstance(ids, (int, np.integer, str, bytes)) or not hasattr(ids, "__iter__"):
        raise MaskmlError(f"remove_objects takes an iterable of object ids, e.g. remove_objects([2]), got {ids!r}")
    ids = {check_object_id(i) for i in ids}
    tracked = sorted(tracked)
    unknown = sorted(ids.difference(tracked))
    if unknown:
        raise MaskmlError(f"cannot remove objects {unknown}: they are not tracked (objects: {tracked or 'none'})")
    return ids
