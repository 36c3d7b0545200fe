"""Where the project finds data it reads in place (never copied into the repository)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_root() -> Path:
    """The shared folder (``$LIC_SHARED``, default ``<repo>/../shared``)."""
    return Path(os.environ.get("LIC_SHARED", REPO.parent / "shared"))


def datasets_root() -> Path:
    """Dataset folders (``$LIC_DATASETS``, default ``<shared>/datasets``)."""
    return Path(os.environ.get("LIC_DATASETS", shared_root() / "datasets"))


def reference_root() -> Path:
    """Conformance data and published R-D points (``$LIC_REFERENCE``, default ``<shared>/reference``)."""
    return Path(os.environ.get("LIC_REFERENCE", shared_root() / "reference"))
