"""Helpers and assertions shared by the CLI-level tests."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from raider_bids.cli import main


def reset_logger() -> None:
    """Close and drop the app's log handlers, so that one in-process run does not log into the next."""
    logger = logging.getLogger("raider_bids")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 of its content ('dir' for directories)."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def run_cli(capsys, argv) -> tuple[int, str]:
    """main() in-process: (exit code, stderr). argparse errors leave through SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_error(err: str, *fragments: str) -> None:
    """stderr holds exactly one error line, containing every fragment, and no traceback."""
    assert "Traceback" not in err and "Logging error" not in err, err
    lines = [line for line in err.splitlines() if "[ERROR]" in line or "error:" in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_no_partial_files(out: Path) -> None:
    """No hidden (temporary) file anywhere in the output directory but the .bidsignore."""
    if out.is_dir():
        hidden = [p.relative_to(out).as_posix() for p in out.rglob(".*") if p.name != ".bidsignore"]
        assert not hidden, hidden
