from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Test helpers (the independent ML reference) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

@pytest.fixture(autouse=True)
def _app_isolated(monkeypatch, tmp_path_factory):
    """Every test: matplotlib's cache outside tmp_path (whose snapshots some tests compare) and
    shared, so that it is built once; the app's log handlers closed before and after, so that one
    in-process run does not log into the next."""
    from cli_checks import reset_logger

    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.getbasetemp() / "mpl"))
    reset_logger()
    yield
    reset_logger()


VALIDATOR = "bids-validator-deno"  # what the project's test extra installs (pip package bids-validator-deno)


def _find_validator() -> str | None:
    """On PATH, or beside the interpreter (a virtualenv's bin/ when it was not activated)."""
    return shutil.which(VALIDATOR) or shutil.which(VALIDATOR, path=str(Path(sys.executable).parent))


@dataclass(frozen=True)
class Validation:
    """What the validator said about one dataset: its exit code and its parsed JSON report."""

    returncode: int
    report: dict

    @property
    def issues(self) -> list[dict]:
        return self.report["issues"]["issues"]

    @property
    def errors(self) -> list[dict]:
        return [i for i in self.issues if i.get("severity") == "error"]

    @property
    def warnings(self) -> list[dict]:
        return [i for i in self.issues if i.get("severity") == "warning"]


def _describe(issues: list[dict], code_messages: dict[str, str], limit: int = 10) -> str:
    """One line per issue: code, where, and the first line of what the validator says about it."""
    lines = []
    for issue in issues[:limit]:
        code = issue.get("code", "?") + (f"/{issue['subCode']}" if issue.get("subCode") else "")
        message = (issue.get("issueMessage") or code_messages.get(issue.get("code"), "")).strip().splitlines()
        lines.append(f"  {code} at {issue.get('location', '?')}" + (f": {message[0]}" if message else ""))
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


@pytest.fixture(scope="session")
def bids_validator():
    """validate(path) -> Validation: runs bids-validator-deno on a dataset and fails the test,
    with the validator's messages, on any error (or a non-zero exit). Where the validator is not
    installed every test that asks for this fixture is skipped, visibly, never passed."""
    executable = _find_validator()
    if executable is None:
        pytest.skip(f"{VALIDATOR} is not installed (pip install '.[test]' installs it)")

    def validate(path: Path) -> Validation:
        proc = subprocess.run([executable, "--format", "json", str(path)], capture_output=True, text=True,
                              timeout=300, check=False, env={**os.environ, "NO_COLOR": "1"})
        try:
            report = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = None
        if not isinstance(report, dict):
            pytest.fail(f"{VALIDATOR} {path} (exit {proc.returncode}) wrote no JSON report:\n"
                        f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        result = Validation(proc.returncode, report)
        if result.errors or proc.returncode != 0:
            pytest.fail(f"{VALIDATOR} {path} (exit {proc.returncode}) found {len(result.errors)} error(s):\n"
                        + _describe(result.errors, report["issues"].get("codeMessages", {})))
        return result

    return validate
