"""Atomic file and folder writes, shared by every module that writes to disk.

Outputs are built under a temporary name in the destination's own folder (so the final rename
stays on one file system) and renamed into place only when complete: an interrupted or failed run
leaves neither a half-written output nor a stray temporary. Existing outputs are replaced only
when asked to (`force=True`, the CLI's `--force`).
"""

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def _temporary_sibling(path: Path, kind: str) -> Path:
    # Hidden, unique, and keeps the suffix so writers that pick a format from the extension
    # (PyAV, PIL) still do: ".sample.tmp-1a2b3c4d.mp4".
    return path.with_name(f".{path.stem}.{kind}-{secrets.token_hex(4)}{path.suffix}")


def check_can_write(path: PathLike, force: bool = False, expect_dir: bool = False) -> None:
    """Refuse, before any work is done, an output that exists (without `force`) or is of the wrong kind."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if expect_dir and not path.is_dir():
        raise FileExistsError(f"Output {str(path)!r} exists and is not a folder; remove it or choose another path.")
    if not expect_dir and path.is_dir():
        raise IsADirectoryError(f"Output {str(path)!r} is a folder; expected a file path.")
    if not force:
        raise FileExistsError(f"Output {str(path)!r} already exists; pass force=True (--force) to overwrite it.")


@contextlib.contextmanager
def atomic_path(path: PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` when the block succeeds.

    The caller creates and writes the yielded path (it does not exist yet, so the file gets the
    usual permissions). If the block raises, the temporary file is deleted and `path` is left
    untouched. Missing parent folders are created.

    Raises:
        FileExistsError: `path` exists and `force` is False (checked before the block runs, so no
            work is wasted, and again before the rename).
        IsADirectoryError: `path` is a folder.
    """
    path = Path(path)
    check_can_write(path, force, expect_dir=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path, "tmp")
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"Nothing was written to the temporary file {str(temporary)!r} for {str(path)!r}.")
        # Flush to disk before the rename so a crash cannot leave an empty file under the final name.
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        check_can_write(path, force, expect_dir=False)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_directory(path: PathLike, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; move it to `path` when the block succeeds.

    With `force`, an existing folder at `path` is replaced only after the new one is complete
    (renamed aside, the new one renamed in, then the old one deleted; restored if the swap fails).
    If the block raises, the temporary folder is deleted and `path` is left untouched.

    Raises:
        FileExistsError: `path` exists and `force` is False, or `path` is a file.
    """
    path = Path(path)
    check_can_write(path, force, expect_dir=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path, "tmp")
    os.mkdir(temporary)
    try:
        yield temporary
        check_can_write(path, force, expect_dir=True)
        if os.path.lexists(path):
            previous = _temporary_sibling(path, "old")
            os.rename(path, previous)
            try:
                os.rename(temporary, path)
            except BaseException:
                os.rename(previous, path)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
