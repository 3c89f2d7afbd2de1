"""DVC plumbing of ``tierhpo ingest`` (not a stage): data/raw's hash, data.dvc, the repository lock.

``replace_and_track`` swaps a staged data/raw in and records it in data.dvc, rolling both
back if DVC fails, so a failed ingest leaves them as they were.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import paths
from common.errors import TierHpoError


def dir_md5(path: str | Path) -> str:
    """The hash DVC records for a directory (``<md5>.dir``), computed with DVC's own dvc-data."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), os.fspath(path), fs, "md5", dry_run=True)
    return str(obj.hash_info.value)


def tracked_md5(dvc_file: Path) -> str | None:
    import yaml

    try:
        outs = yaml.safe_load(dvc_file.read_text())["outs"]
        (out,) = [o for o in outs if o.get("path") == "data/raw"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise TierHpoError(f"{dvc_file} is not a DVC file tracking data/raw; restore it from git") from exc
    return out.get("md5")


def open_repo():
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(os.fspath(paths.project_root()))
    except NotDvcRepoError as exc:
        raise TierHpoError(f"{paths.project_root()} is not a DVC repository; run `dvc init` first") from exc


@contextmanager
def locked(repo) -> Iterator[None]:
    """Hold DVC's repository lock, so a concurrent `dvc repro` never sees half-swapped data."""
    from dvc.lock import LockError
    from dvc.repo import lock_repo

    try:
        with lock_repo(repo):
            yield
    except LockError as exc:
        raise TierHpoError("the DVC repository is locked (is `dvc repro` running?); retry when it ends") from exc


def cached(repo) -> bool:
    status = repo.status(targets=[os.fspath(dvc_file_path())])
    return not status


def dvc_file_path() -> Path:
    return paths.project_root() / "data.dvc"


def replace_and_track(staged: Path) -> str:
    """Swap ``staged`` in as data/raw and record it in data.dvc; roll back if DVC fails."""
    raw, dvc_file = paths.raw_dir(), dvc_file_path()
    repo = open_repo()
    with locked(repo):
        old_dvc = dvc_file.read_bytes() if dvc_file.exists() else None
        if old_dvc is None:
            # DVC 3 has no `dvc add --file`: a stub naming data/raw lets `add` update it in place.
            dvc_file.write_text("outs:\n- path: data/raw\n")
        backup = raw.with_name(".raw.previous")
        shutil.rmtree(backup, ignore_errors=True)
        if raw.exists():
            os.replace(raw, backup)
        os.replace(staged, raw)
        try:
            repo.add(os.fspath(raw))  # absolute: DVC resolves relative paths from the cwd
        except Exception:
            shutil.rmtree(raw, ignore_errors=True)
            if backup.exists():
                os.replace(backup, raw)
            if old_dvc is None:
                dvc_file.unlink(missing_ok=True)
            else:
                dvc_file.write_bytes(old_dvc)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    return str(tracked_md5(dvc_file))
