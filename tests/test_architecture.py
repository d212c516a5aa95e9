"""The import rules of ARCHITECTURE.md, checked with import-linter.

The contracts live in pyproject.toml (``[tool.importlinter]``): the service's layers import
only downwards (cli → commands → app → api | evaluation → bootstrap → search → decisions →
pipeline → core), ``storage`` and ``index`` stand alone, and only the HTTP layer imports
FastAPI. ``lint-imports`` from the repository root runs the same check by hand.
"""

from __future__ import annotations

import pytest

from tests.paths import REPO_ROOT


def test_import_rules_hold(capsys: pytest.CaptureFixture[str]) -> None:
    from importlinter import api  # noqa: F401 - importing it configures import-linter
    from importlinter.application import use_cases

    kept = use_cases.lint_imports(
        config_filename=str(REPO_ROOT / "pyproject.toml"), cache_dir=None, no_logo=True
    )
    report = capsys.readouterr().out
    assert kept, report
