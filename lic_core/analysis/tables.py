"""Text tables for papers and READMEs: GitHub Markdown and booktabs LaTeX (the figures are
:mod:`lic_core.analysis.viz`; BD-rate tables come from :mod:`lic_core.analysis.bdrate`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lic_core.atomic import write_file
from lic_core.errors import LicError


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def table_markdown(df: pd.DataFrame, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (index as first column, numbers right-aligned)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    num = [False] + [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rows = [[str(i)] + [_fmt(v, digits) for v in r] for i, r in zip(df.index, df.itertuples(index=False))]
    esc = [[c.replace("|", "\\|") for c in r] for r in [cols, *rows]]
    lines = ["| " + " | ".join(r) + " |" for r in esc]
    lines.insert(1, "|" + "|".join("---:" if n else ":---" for n in num) + "|")
    return "\n".join(lines) + "\n"


def table_latex(df: pd.DataFrame, digits: int = 2, caption: str | None = None,
                label: str | None = None) -> str:
    """A booktabs LaTeX table (``\\toprule``/``\\midrule``/``\\bottomrule``), special chars escaped."""
    return df.to_latex(float_format=f"%.{digits}f", escape=True, caption=caption, label=label)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN experiment:{name} -->", f"<!-- END experiment:{name} -->"


def write_results(path: str | Path, name: str, body: str) -> Path:
    """Replace the generated block ``name`` in the Markdown file ``path`` (appended when absent);
    everything else in the file is kept as is."""
    path = Path(path)
    begin, end = _markers(name)
    text = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if text.count(begin) > 1:
        raise LicError(f"{path} holds the block {begin} more than once; fix the file by hand")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if begin in text else f"{text.rstrip()}\n\n{block}\n".lstrip()
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, text if text.endswith("\n") else text + "\n")
