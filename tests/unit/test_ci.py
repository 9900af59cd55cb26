"""CI strictness: which values of ``CI`` turn a skipped test into a failure."""

from __future__ import annotations

import pytest

from tests.support.ci import under_ci


@pytest.mark.parametrize(
    ("value", "strict"),
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False), ("", False)],
)
def test_only_true_and_1_mean_ci(monkeypatch: pytest.MonkeyPatch, value: str, strict: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert under_ci() is strict


def test_unset_is_not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert under_ci() is False


def test_ci_run_sets_ci_true_itself() -> None:
    from tests.conftest import ROOT

    script = (ROOT / ".ci" / "run").read_text()
    assert "\nexport CI=true\n" in script
    assert script.index("export CI=true") < script.index("-m pytest")
