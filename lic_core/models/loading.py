"""Loading any HPCM checkpoint: ours (:func:`~lic_core.models.hpcm.save_checkpoint`) or the
authors' released ones (:mod:`lic_core.models.authors`), told apart by their keys."""
from __future__ import annotations

import os

from lic_core.models.authors import load_authors_checkpoint
from lic_core.errors import CheckpointError
from lic_core.models.hpcm import HPCM, from_checkpoint, read_checkpoint


def load_checkpoint(path: str | os.PathLike) -> HPCM:
    """Our checkpoint or the authors' (their tensor names, Base or Large inferred) -> an HPCM in
    eval mode; every failure is a :class:`~lic_core.errors.CheckpointError` naming the file."""
    obj = read_checkpoint(path)
    sd = obj.get("state_dict", obj)
    if not all(isinstance(k, str) for k in obj) or not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise CheckpointError(f"{path}: checkpoint keys must be names (strings)")
    if "config" not in obj:
        return load_authors_checkpoint(obj, str(path))
    return from_checkpoint(obj, str(path))
