"""docs/QUICKSTART.md: the command, the notebook to open first and where outputs go are real."""
from __future__ import annotations

import re

from lic_core.paths import REPO

QUICKSTART = REPO / "docs" / "QUICKSTART.md"


def test_quickstart_names_command_notebook_and_outputs():
    text = QUICKSTART.read_text()
    assert re.search(r"^.*jupyter lab\b", text, re.M), "the command that starts JupyterLab"
    first = re.search(r"Open \*\*`(notebooks/[\w.-]+\.ipynb)`\*\*", text)
    assert first and (REPO / first.group(1)).is_file(), "an existing notebook to open first"
    for notebook in re.findall(r"`(0\d_\w+)`", text):
        assert list((REPO / "notebooks").glob(f"{notebook}.ipynb")), f"{notebook} is not a notebook"
    assert "papermill_runs/" in text and "figures/<name>" in text, "where the outputs go, and how to export figures"


def test_quickstart_first_notebook_opens_the_shipped_models():
    import nbformat

    first = re.search(r"Open \*\*`(notebooks/[\w.-]+\.ipynb)`\*\*", QUICKSTART.read_text()).group(1)
    params = next(c for c in nbformat.read(REPO / first, as_version=4).cells
                  if "parameters" in c.metadata.get("tags", []))
    assert 'run_root = "checkpoints/tiny"' in params.source  # no training before the first look
