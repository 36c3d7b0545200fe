"""Shared fixtures. Data under ../shared is optional on a user's machine (tests skip with the
reason) but required in CI, where ``.ci/run`` sets ``LIC_REQUIRE_DATA=1`` and absence fails.
Every skip goes through :func:`skip_or_fail` (``tests/test_skips.py`` rejects any other)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

# Before torch loads OpenMP: spinning worker threads collapse when the 2 cores are shared
# (measured: a tiny train step 12 s with active waiting vs 1.5 s passive under load 10).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The autotuner's machine cache: one per test process (and the subprocesses it starts), never the
# user's ~/.cache, so a test run neither reads nor leaves choices measured under its own load.
os.environ.setdefault("LIC_AUTOTUNE_CACHE", os.path.join(tempfile.gettempdir(), f"lic-autotune-tests-{os.getpid()}.json"))

import pytest  # noqa: E402
import torch  # noqa: E402

from lic_core.paths import datasets_root, reference_root  # noqa: E402

# Two threads per test process, or the cores shared out among pytest-xdist's workers (`./run test`
# runs two): side by side, 1-thread processes get more done on 2 cores than one 2-thread process.
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))

SKIP_KINDS = {"data": "LIC_REQUIRE_DATA", "env": "LIC_REQUIRE_ENV", "cpu": "LIC_REQUIRE_CPU"}


class RoutedSkip(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A skip raised by :func:`skip_or_fail`; any other skip fails under ``LIC_REQUIRE_DATA=1``."""


def required(kind: str) -> bool:
    """Whether a skip of ``kind`` is a failure here: ``LIC_REQUIRE_DATA=1`` for data;
    ``LIC_REQUIRE_ENV`` for the machine, which follows ``LIC_REQUIRE_DATA`` when unset."""
    if kind not in SKIP_KINDS:
        raise ValueError(f"skip kind {kind!r}: choose from {', '.join(SKIP_KINDS)}")
    if kind == "cpu":  # the project's machines differ: a missing CPU feature fails only on request
        return os.environ.get("LIC_REQUIRE_CPU") == "1"
    if kind == "env" and os.environ.get("LIC_REQUIRE_ENV", "") != "":
        return os.environ["LIC_REQUIRE_ENV"] == "1"
    return os.environ.get("LIC_REQUIRE_DATA") == "1"


def skip_or_fail(msg: str, kind: str = "data") -> NoReturn:
    """Skip with ``msg`` on a user's machine; where the skip's ``kind`` is required, fail instead.
    The one way a test skips.

    - ``kind="data"``: something the project provides and CI has: datasets and reference files
      under ../shared, the shipped checkpoints, a Pillow with every codec, chromium. Fails under
      ``LIC_REQUIRE_DATA=1`` (``.ci/run`` sets it).
    - ``kind="env"``: software the machine must have: a C++ compiler for ``torch.compile``. Fails
      under ``LIC_REQUIRE_ENV=1``; unset, it follows ``LIC_REQUIRE_DATA``, so CI (gcc installed)
      runs them all. A machine known to lack it sets ``LIC_REQUIRE_ENV=0``: those tests then skip.
    - ``kind="cpu"``: a CPU feature the project's machines may lack (bfloat16 kernels need
      AVX-512; its machines are Intel and AMD CPUs with and without it). Skips, said so, unless
      ``LIC_REQUIRE_CPU=1`` (for a run on a machine known to have it).
    """
    if required(kind):
        flag = SKIP_KINDS[kind] if kind == "cpu" or (kind == "env" and os.environ.get("LIC_REQUIRE_ENV")) \
            else "LIC_REQUIRE_DATA"
        pytest.fail(f"{msg}; {flag}=1 makes this a failure", pytrace=False)
    print(f"SKIP ({kind}): {msg}")
    raise RoutedSkip(msg=msg, _use_item_location=True)  # reported at the test, not here


def requires(check: Callable[[], bool], reason: str, kind: str = "env") -> pytest.MarkDecorator:
    """A mark that runs the test only where ``check()`` holds, otherwise :func:`skip_or_fail`
    with ``reason`` and ``kind`` (checked when the test is set up, not at import)."""
    return pytest.mark.requires(check=check, reason=reason, kind=kind)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(check, reason, kind): see conftest.requires")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        if not mark.kwargs["check"]():
            skip_or_fail(mark.kwargs["reason"], mark.kwargs.get("kind", "env"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """A skip that did not come through :func:`skip_or_fail` (a bare ``pytest.skip`` anywhere,
    an empty parametrization) fails under ``LIC_REQUIRE_DATA=1``."""
    outcome = yield
    report = outcome.get_result()
    exc = call.excinfo
    if (report.skipped and exc is not None and exc.errisinstance(pytest.skip.Exception)
            and not exc.errisinstance(RoutedSkip) and required("data")):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: skipped without skip_or_fail ({exc.value}); "
                           "LIC_REQUIRE_DATA=1 makes this a failure")


def _need(path: Path) -> Path:
    if not path.exists():
        skip_or_fail(f"{path} is absent (set LIC_SHARED / LIC_DATASETS / LIC_REFERENCE)")
    return path


@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    return _need(datasets_root() / "kodak")


@pytest.fixture(scope="session")
def wikiphotos_dir() -> Path:
    return _need(datasets_root() / "wikiphotos")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(reference_root())
