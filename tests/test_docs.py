"""The docs cite only files that exist (benchmark results, figures, checkpoints, run records,
notebooks, sweeps, studies and modules named by a repository path), RESULTS.md's blocks regenerate
from the committed files, and the README stays a short page for users."""
from __future__ import annotations

import re

import pytest

from lic_core.paths import REPO

DOCS = ("README.md", "RESULTS.md", *sorted(str(p.relative_to(REPO)) for p in [*(REPO / "docs").glob("*.md"),
                                                                             *(REPO / "studies").glob("**/README.md"),
                                                                             *(REPO / "studies").glob("*/PROTOCOL.md")]))
# A repository path: one of the project's top folders, then a file name with an extension.
CITED = re.compile(r"(?<![\w/.])((?:benchmarks|figures|checkpoints|papermill_runs|notebooks|sweeps|studies|docs|lic_core|tests)"
                   r"/[\w./-]*\.(?:md|txt|json|jsonl|csv|pdf|png|pt|ipynb|yaml|py|tex))")


OUTPUT = re.compile(r"papermill \S+\.ipynb (\S+\.ipynb)")  # what a cited command writes, not reads


def cited(doc: str) -> list[str]:
    text = (REPO / doc).read_text()
    outputs = set(OUTPUT.findall(text))
    return sorted(set(CITED.findall(text)) - outputs)


@pytest.mark.parametrize("doc", DOCS)
def test_every_cited_file_exists(doc):
    paths = cited(doc)
    assert paths, f"{doc} cites no repository file (the pattern is broken)"
    missing = [p for p in paths if not (REPO / p).exists() and "<" not in p and "*" not in p]
    assert not missing, f"{doc} cites files that do not exist: {missing}"


def test_benchmark_results_cited_by_the_performance_page_exist():
    results = [p for p in cited("docs/PERFORMANCE.md") if p.startswith("benchmarks/results/")]
    assert results and all((REPO / p).is_file() for p in results)


def test_readme_is_a_short_page_that_links_its_details():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in ("RESULTS.md", "docs/ARCHITECTURE.md", "docs/PERFORMANCE.md", "docs/QUICKSTART.md", "docs/CODEC.md"):
        assert f"({page})" in text and (REPO / page).is_file(), page


def _block(text: str, name: str) -> str:
    """RESULTS.md's block ``name`` without what legitimately differs between two reports of the
    same files: the date and the folder the figures were written to."""
    begin, end = f"<!-- BEGIN experiment:{name} -->", f"<!-- END experiment:{name} -->"
    body = text[text.index(begin):text.index(end)]
    body = re.sub(r"reported \d{4}-\d{2}-\d{2}", "reported DATE", body)
    body = re.sub(r"\]\([^)]*?([\w-]+\.png)\)", r"](\1)", body)
    return re.sub(r"Figures: `[^`]*`", "Figures: FOLDER", body)


STUDIES = {"study_tiny": "tiny", "study_tiny_bf16": "tiny_bf16", "study_tiny_matched": "tiny_matched"}


@pytest.mark.parametrize("name", ["experiment_cpu", *STUDIES])
def test_results_blocks_regenerate_from_committed_files(name, tmp_path):
    """Each report block of RESULTS.md is what its documented command writes from the committed
    files alone (no weights, no test images): commit the files and the block together."""
    from studies import scratch_sweep as experiment
    from studies import trunk_branch as study

    results = tmp_path / "RESULTS.md"
    results.write_text((REPO / "RESULTS.md").read_text())
    if name == "experiment_cpu":
        spec = experiment.load_protocol(REPO / "studies" / "scratch_600" / "cpu.yaml", {}, {}, "")
        experiment.report(spec, results, tmp_path / "fig")
    else:
        study.report(study.load_study(REPO / "studies" / STUDIES[name] / "study.yaml", REPO), results, tmp_path / "fig")
    assert _block(results.read_text(), name) == _block((REPO / "RESULTS.md").read_text(), name)
