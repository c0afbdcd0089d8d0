"""Assertions shared by the CLI-level tests."""


def assert_one_error(err: str, *fragments: str) -> None:
    """stderr holds exactly one error line, containing every fragment, and no traceback."""
    assert "Traceback" not in err and "Logging error" not in err, err
    lines = [line for line in err.splitlines() if "[ERROR]" in line or "error:" in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
