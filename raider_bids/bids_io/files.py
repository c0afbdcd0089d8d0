"""The only code that writes files: each write goes to a temporary file beside its target, which
replaces the target only when the write succeeded (no half-written file is ever left behind)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from ..errors import OutputError


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` that replaces it only if the block succeeds. Failing
    writes (a file where a directory should be, no permission, a full disk) raise OutputError."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{exc.filename or target.parent}: cannot write {target.name} "
                          f"({exc.strerror or exc})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix="".join(target.suffixes) or ".tmp",
                                   dir=target.parent)
        os.close(fd)
    except OSError as exc:  # its file name is the temporary one, which the user never asked for
        raise OutputError(f"{target.parent}: cannot write {target.name} ({exc.strerror or exc})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: Path, content: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")


def copy_file(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def write_text(target: Path, content: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(content)


def write_nifti(target: Path, data: np.ndarray, reference: nib.Nifti1Image, dtype: type = np.float32) -> None:
    """`data` in the reference image's grid, with its affine and orientation codes."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(target) as tmp:
        nib.save(img, tmp)


def write_figure(target: Path, figure) -> None:
    """A matplotlib figure as PNG (fast zlib level: encoding at the default took longer than drawing)."""
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100, pil_kwargs={"compress_level": 1})


def write_torch(target: Path, obj: Any) -> None:
    import torch  # only runs that trained networks write weights

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def write_tsv(target: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A BIDS TSV: tab-separated, header row, missing values as n/a."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "n/a"
        return format(value, ".8g") if isinstance(value, float) else str(value)

    lines = ["\t".join(columns)] + ["\t".join(cell(row.get(c)) for c in columns) for row in rows]
    write_text(target, "\n".join(lines) + "\n")
