"""Notebooks in a real browser: JupyterLab on localhost driven by headless Chromium.

The notebook ``docs/QUICKSTART.md`` says to open first (the λ explorer, notebook 06) runs there on
the shipped models in ``checkpoints/tiny``: its reconstruction panel shows the decoded image at the
PSNR its label states, and moving the λ slider changes image and readouts. Notebooks 01 and 05 must
draw their figures there without browser console errors. ``tests/browser/fixtures/explorer.ipynb`` checks
the harness itself. Needs ``.ci/install-browser.sh``; without chromium the tests skip, unless
``LIC_REQUIRE_DATA=1`` (CI), where that is a failure. Screenshots: ``test-artifacts/browser/``.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from browser.harness import ARTIFACTS, CHROMIUM, REPO, Browser, JupyterLab, NotebookPage
from browser.harness import chromium_available, poll, prepare_notebook
from conftest import skip_or_fail

FIXTURE = Path(__file__).parent / "browser" / "fixtures" / "explorer.ipynb"
RUNS = ARTIFACTS / "runs"
TINY_LAMBDAS = [0.0018, 0.0483]
# Small values injected into each notebook's parameters cell (papermill) to keep CI fast; 05 reads
# the checkpoints of the ``tiny_runs`` fixture (its "run_root").
PARAMETERS: dict[str, dict] = {
    "01": {"steps": 6, "batch": 2, "patch": 128, "run_dir": str(RUNS / "01_train"),
           "figures_dir": str(ARTIFACTS / "figures" / "01")},
    "05": {"modes": ["standard"], "anchor": "standard", "train_if_missing": False, "limit": 1,
           "crop": 128, "codecs": ["jpeg"], "out_dir": str(RUNS / "05_evaluation"),
           "figures_dir": str(ARTIFACTS / "figures" / "05")},
}
LAMBDA = re.compile(r"λ|lambda", re.I)
FIGURE_SOURCE = re.compile(r"^\s*fig\s*[,=]|plt\.show\(|\.savefig\(|save_figure\(", re.M)
RUN_TIMEOUT = 300.0  # seconds for Run All Cells on a loaded 2-core machine
QUICKSTART = REPO / "docs" / "QUICKSTART.md"
SHIPPED = REPO / "checkpoints" / "tiny"
EXPLORER_CROP = 128


def _notebook(prefix: str) -> Path:
    found = sorted((REPO / "notebooks").glob(f"{prefix}_*.ipynb"))
    if not found:
        skip_or_fail(f"notebooks/{prefix}_*.ipynb does not exist")
    return found[0]


@pytest.fixture(scope="module")
def lab() -> Iterator[JupyterLab]:
    if not chromium_available():
        skip_or_fail(f"{CHROMIUM} or the playwright package is absent (run .ci/install-browser.sh)")
    with JupyterLab() as server:
        yield server


@pytest.fixture(scope="module")
def tiny_runs(kodak_dir: Path, wikiphotos_dir: Path) -> Path:
    """Fresh checkpoints of the tiny model at two λ for notebooks 05 and 06: two Adam steps at a
    large learning rate already give the two λ different bitstreams (kodim01, crop 128: 1.6 vs
    3.5 to 4.1 bpp in our runs), in about 20 s instead of the minutes real training takes."""
    from lic_core.workbench import workbook

    root = RUNS / "tiny"
    shutil.rmtree(root, ignore_errors=True)
    workbook.ensure_runs(root, ["standard"], TINY_LAMBDAS, model="tiny", steps=2, batch=1,
                         patch=128, lr=1e-2, train_dir=wikiphotos_dir, test_dir=kodak_dir,
                         test_limit=1, eval_every=2)
    return root


@pytest.fixture(scope="module")
def browser(lab: JupyterLab) -> Iterator[Browser]:
    with Browser() as b:
        yield b


def _run(browser: Browser, lab: JupyterLab, src: Path, params: dict | None) -> NotebookPage:
    page = browser.open(lab, prepare_notebook(src, params))
    page.run_all(RUN_TIMEOUT)
    page.assert_ran_clean()
    return page


def _assert_console_clean(page: NotebookPage) -> None:
    assert not page.console.errors, f"{page.path.name}: browser console errors:\n" + "\n".join(
        page.console.errors)


def _figure_cells(nb) -> dict[int, int]:
    """{cell index: images expected} of the code cells that make a figure: their source builds
    or saves one, or the kernel sent them an image (the notebook as saved from the page)."""
    cells = {}
    for i, c in enumerate(nb.cells):
        outputs = c.get("outputs", [])
        sent = sum(any(k.startswith("image/") for k in o.get("data", {})) for o in outputs)
        if c.cell_type == "code" and (sent or FIGURE_SOURCE.search(c.source)):
            cells[i] = max(sent, 1)
    return cells


def _check_figures(page: NotebookPage, name: str) -> int:
    """Every figure cell shows at least one drawn image (as many as the kernel sent) in the page."""
    figures = _figure_cells(page.save())
    assert figures, f"{page.path.name}: no figure cell"
    missing = []
    for i, n in figures.items():
        cell = page.cell(i)
        page.screenshot(f"{name}-cell{i}", cell)
        drawn = [im for im in page.rendered_images(cell) if im["width"] > 0 and im["natural"] > 0]
        if len(drawn) < n:
            missing.append(f"cell {i} ({len(drawn)} of {n} drawn): {page.cell_source(i)[:80]!r}")
    assert not missing, f"{page.path.name}: figure cells without a figure in the page:\n" + "\n".join(
        missing)
    _assert_console_clean(page)
    return len(figures)


def _state(page: NotebookPage, scope) -> dict[str, list]:
    return {"images": [im["sha256"] for im in page.rendered_images(scope)],
            **{key: page.readouts(key, scope) for key in ("bpp", "PSNR", "MS-SSIM")}}


def quickstart_notebook() -> Path:
    """The notebook ``docs/QUICKSTART.md`` tells a new user to open first."""
    found = re.search(r"Open \*\*`(notebooks/[\w.-]+\.ipynb)`\*\*", QUICKSTART.read_text())
    assert found, f"{QUICKSTART} names no notebook to open first (Open **`notebooks/...`**)"
    path = REPO / found.group(1)
    assert path.is_file(), f"{QUICKSTART} names {found.group(1)}, which does not exist"
    return path


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255.0 ** 2 / mse) if mse > 0 else math.inf


def _decoded_matches_label(original: np.ndarray) -> Callable[[NotebookPage, object], np.ndarray]:
    """A check of the explorer's reconstruction panel: among the page's images of the original's
    size, the decoded one is a real image (not blank) whose PSNR against the original is the one
    the readout states (2 decimals). Returns the decoded pixels."""

    def check(page: NotebookPage, scope) -> np.ndarray:
        shown = [im for im in page.image_pixels(scope) if im.shape == original.shape]
        decoded = [im for im in shown if _psnr(im, original) < math.inf]
        assert decoded, f"no decoded {original.shape[1]}x{original.shape[0]} image in the explorer"
        labels = page.readouts("PSNR", scope)
        for im in decoded:
            value = _psnr(im, original)
            assert im.std() > 10, f"the reconstruction panel is blank (std {im.std():.1f})"
            assert value > 20, f"the decoded image is at {value:.2f} dB: not a trained model's"
            assert any(abs(value - v) < 0.006 for v in labels), (
                f"the decoded image is at {value:.2f} dB, the labels say {labels}")
        return decoded[0]

    return check


def _check_explorer(page: NotebookPage, name: str,
                    decoded: Callable[[NotebookPage, object], np.ndarray] | None = None) -> None:
    """Move the λ slider one step; the reconstruction and the bpp / PSNR readouts must change.
    ``decoded`` checks the reconstruction panel before and after the step."""
    slider = page.slider(LAMBDA)
    cell = page.cell_of(slider)
    scope = cell if page.readouts("bpp", cell) else None  # readouts may sit in another cell
    before = _state(page, cell if scope else None)
    for key in ("images", "bpp", "PSNR"):
        assert before[key], f"{page.path.name}: no {key} shown next to the λ slider"
    page.screenshot(f"{name}-before", cell)
    pixels = decoded(page, scope) if decoded else None
    page.step_slider(slider)

    def changed() -> dict | None:
        now = _state(page, scope)
        return now if all(now[k] != before[k] for k in ("images", "bpp", "PSNR")) else None

    try:
        after = poll("the explorer to redraw after the λ step", changed, RUN_TIMEOUT, every=1.0)
    finally:
        page.screenshot(f"{name}-after", cell)
    page.wait_idle()
    assert not page.errors(), "\n".join(page.errors())
    if before["MS-SSIM"]:
        assert _state(page, scope)["MS-SSIM"] != before["MS-SSIM"], "MS-SSIM readout unchanged"
    if decoded:
        assert not np.array_equal(decoded(page, scope), pixels), "moving λ left the decoded image as it was"
    print(f"{name}: bpp {before['bpp']} -> {after['bpp']}, PSNR {before['PSNR']} -> {after['PSNR']}")
    _assert_console_clean(page)


def test_harness_on_fixture(browser: Browser, lab: JupyterLab) -> None:
    """The harness itself, on a miniature explorer: figures drawn, slider redraws, no errors."""
    with _run(browser, lab, FIXTURE, {"size": 64}) as page:
        assert _check_figures(page, "fixture") == 2  # the R-D plot and the slider's image
        _check_explorer(page, "fixture")


@pytest.mark.parametrize("prefix", ["01", "05"])
def test_figures_in_browser(browser: Browser, lab: JupyterLab, prefix: str,
                            request: pytest.FixtureRequest) -> None:
    src = _notebook(prefix)
    params = dict(PARAMETERS[prefix])
    for key in ("run_dir", "out_dir"):  # a fresh run: an earlier one (other data) is not resumed
        if key in params:
            shutil.rmtree(params[key], ignore_errors=True)
    if "run_dir" not in params:
        params["run_root"] = str(request.getfixturevalue("tiny_runs"))
    with _run(browser, lab, src, params) as page:
        _check_figures(page, prefix)


def test_quickstart_explorer_on_shipped_models(browser: Browser, lab: JupyterLab) -> None:
    """The quick start's first notebook as a new user runs it: its own defaults (the shipped
    models), only fewer and smaller images; the decoded image is at the PSNR its label states."""
    from lic_core.workbench import store, workbook

    src = quickstart_notebook()
    runs = {"standard": store.models(store.checked(SHIPPED), "standard")}
    original = workbook.explorer(runs, "kodak", limit=1, crop=EXPLORER_CROP).original(0)
    with _run(browser, lab, src, {"limit": 1, "crop": EXPLORER_CROP}) as page:
        text = "\n".join(page.notebook.locator(".jp-OutputArea-output").all_inner_texts())
        assert f"λ={min(runs['standard']):g}" in text, "the explorer does not show the shipped models"
        _check_explorer(page, "06", _decoded_matches_label(original))
