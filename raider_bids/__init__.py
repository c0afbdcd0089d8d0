"""raider-bids: PDFF, R2* and S0 maps from magnitude multi-echo gradient-echo MRI (BIDS App)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["__version__", "CODE_URL", "NAME"]

NAME = "raider-bids"
CODE_URL = "https://github.com/raider-bids/raider-bids"


def _read_version() -> str:
    # The top-level `version` file is the one source; an installed wheel carries it as metadata.
    source_file = Path(__file__).resolve().parent.parent / "version"
    if source_file.is_file():
        return source_file.read_text().strip()
    from importlib import metadata  # here: importing it costs more than reading the file

    try:
        return metadata.version(NAME)
    except metadata.PackageNotFoundError:  # pragma: no cover - only on broken installs
        return "0+unknown"


__version__ = _read_version()
