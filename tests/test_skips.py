"""Every skip goes through ``conftest.skip_or_fail``: no test file skips (or expects to fail) any
other way, ``LIC_REQUIRE_DATA=1`` turns a data skip into a failure, ``LIC_REQUIRE_ENV`` (following
``LIC_REQUIRE_DATA`` when unset) a machine skip, and a skip that bypasses the helper at run time
fails under ``LIC_REQUIRE_DATA=1`` too."""
from __future__ import annotations

import ast
from pathlib import Path

import conftest
import pytest

TESTS = Path(__file__).resolve().parent
# names that skip (or turn a failure into a pass) without the helper: pytest's, unittest's
BARE = {"skip", "skipif", "importorskip", "xfail", "skipTest", "skipIf", "skipUnless"}
# the helper's own plumbing in conftest.py (the skip it raises, the hook that checks the others) and
# this file's checks of that hook, which raise a bare skip on purpose
ALLOWED = {"conftest.py": {"RoutedSkip", "pytest_runtest_makereport"},
           "test_skips.py": {"check_bare_skip_is_caught", "test_a_bare_skip_at_run_time_fails_in_ci"},
           "test_mutations.py": {"test_a_bare_skip_in_place_of_the_helper_is_caught"}}


def bare_skips(source: str, name: str = "<source>") -> list[str]:
    """``file:line: what`` for each use of a skip/xfail name in ``source`` outside the top-level
    definitions ``ALLOWED`` for a file of that ``name``."""
    tree = ast.parse(source)
    allowed = ALLOWED.get(Path(name).name, set())
    skip_lines: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in allowed:
            skip_lines |= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    found = []
    for node in ast.walk(tree):
        used = (node.attr if isinstance(node, ast.Attribute) and node.attr in BARE else
                ", ".join(a.name for a in node.names if a.name in BARE) if isinstance(node, ast.ImportFrom) else "")
        if used and node.lineno not in skip_lines:
            found.append(f"{name}:{node.lineno}: {used}")
    return found


def check_no_bare_skips(sources: dict[str, str]) -> None:
    """No source in ``sources`` (name: text) skips except through ``skip_or_fail`` (or its
    ``requires`` mark)."""
    found = [hit for name, text in sources.items() for hit in bare_skips(text, name)]
    assert not found, "skip through conftest.skip_or_fail or conftest.requires instead:\n" + "\n".join(found)


def suite_sources() -> dict[str, str]:
    """Every Python file under tests/, by its path from the repository root."""
    return {str(f.relative_to(TESTS.parent)): f.read_text() for f in sorted(TESTS.rglob("*.py"))}


def test_no_bare_skips_in_the_suite():
    sources = suite_sources()
    assert {"tests/conftest.py", "tests/train_helpers.py", "tests/test_study.py"} <= set(sources)
    check_no_bare_skips(sources)


@pytest.mark.parametrize("line", [
    "pytest.skip('no data')", "pytest.importorskip('cv2')", "pytestmark = pytest.mark.skipif(True, reason='x')",
    "from pytest import skip", "self.skipTest('x')", "@pytest.mark.xfail\ndef test(): pass",
])
def test_the_guard_sees_each_bare_skip(line):
    assert len(bare_skips(line)) == 1
    assert bare_skips(line, "tests/conftest.py")  # conftest's exemption is for its plumbing only


def _raised(fn, *args, **kw) -> BaseException:
    try:
        fn(*args, **kw)
    except BaseException as e:  # noqa: BLE001 (pytest's outcomes are BaseExceptions)
        return e
    raise AssertionError(f"{fn.__name__} returned")


@pytest.mark.parametrize("data,env,kind,fails", [
    (None, None, "data", False), (None, None, "env", False),
    ("1", None, "data", True), ("1", None, "env", True),  # CI: the project's machine has both
    ("1", "0", "env", False), ("1", "0", "data", True),  # a CI machine known to lack them
    (None, "1", "env", True), (None, "1", "data", False),
    ("1", None, "cpu", False), ("1", "1", "cpu", False),  # a CPU feature: the project's CPUs differ
])
def test_skip_or_fail_policy(monkeypatch, data, env, kind, fails):
    for var, v in (("LIC_REQUIRE_DATA", data), ("LIC_REQUIRE_ENV", env)):
        monkeypatch.delenv(var, raising=False) if v is None else monkeypatch.setenv(var, v)
    e = _raised(conftest.skip_or_fail, "why", kind=kind)
    assert isinstance(e, pytest.fail.Exception if fails else conftest.RoutedSkip), type(e)
    assert str(e).startswith("why")
    monkeypatch.setenv("LIC_REQUIRE_CPU", "1")  # a run on a machine known to have the feature
    assert isinstance(_raised(conftest.skip_or_fail, "why", kind="cpu"), pytest.fail.Exception)
    monkeypatch.delenv("LIC_REQUIRE_CPU")
    with pytest.raises(ValueError, match="skip kind"):
        conftest.skip_or_fail("why", kind="other")


def _report(item: pytest.Item, fn) -> pytest.TestReport:
    """The report the suite's makereport hook gives for ``fn`` run as ``item``'s call phase."""
    import pluggy

    call = pytest.CallInfo.from_call(fn, "call")
    hook = conftest.pytest_runtest_makereport(item, call)
    next(hook)
    result = pluggy.Result.from_call(lambda: pytest.TestReport.from_item_and_call(item, call))
    with pytest.raises(StopIteration):
        hook.send(result)
    return result.get_result()


def check_bare_skip_is_caught(item: pytest.Item) -> None:
    """Under ``LIC_REQUIRE_DATA=1`` a skip raised past the helper is reported failed."""
    assert _report(item, lambda: pytest.skip("bare")).outcome == "failed", "a bare skip passed as skipped"


def test_a_bare_skip_at_run_time_fails_in_ci(request, monkeypatch):
    monkeypatch.setenv("LIC_REQUIRE_DATA", "1")
    monkeypatch.setenv("LIC_REQUIRE_ENV", "0")
    check_bare_skip_is_caught(request.node)
    r = _report(request.node, lambda: conftest.skip_or_fail("no compiler", kind="env"))
    assert r.outcome == "skipped"
    monkeypatch.delenv("LIC_REQUIRE_DATA")
    assert _report(request.node, lambda: pytest.skip("bare")).outcome == "skipped"


def test_requires_mark_goes_through_the_helper(request, monkeypatch):
    """``conftest.requires`` (``train_helpers.needs_cpu_bf16``) is checked at setup, via the helper."""
    from train_helpers import needs_cpu_bf16

    mark = needs_cpu_bf16.mark
    assert mark.name == "requires" and mark.kwargs["kind"] == "cpu" and "AVX-512" in mark.kwargs["reason"]
    request.node.add_marker(conftest.requires(lambda: False, "no such feature", kind="env"))
    monkeypatch.setenv("LIC_REQUIRE_DATA", "1")
    monkeypatch.delenv("LIC_REQUIRE_ENV", raising=False)
    e = _raised(conftest.pytest_runtest_setup, request.node)
    assert isinstance(e, pytest.fail.Exception) and "no such feature" in str(e)
    monkeypatch.setenv("LIC_REQUIRE_ENV", "0")
    assert isinstance(_raised(conftest.pytest_runtest_setup, request.node), conftest.RoutedSkip)
