"""Text tables for papers and READMEs: GitHub Markdown and booktabs LaTeX (the figures are
:mod:`lic_core.viz`; BD-rate tables come from :mod:`lic_core.bdrate`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


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
