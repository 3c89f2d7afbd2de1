"""The validation record: the contract between the validate stage (writer) and every trainer (reader).

The validate stage writes ``reports/validation/<symbol>_<tier>.json`` only when the Great
Expectations suite passed; it holds the md5 of the tier files it checked. Readers call
``ensure_validated`` so nothing trains on a tier that changed since it was validated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from common import paths
from common.errors import TierHpoError


def validation_dir() -> Path:
    return paths.reports_dir() / "validation"


def summary_path(symbol: str, tier: str) -> Path:
    """The small success record (the validate stage's DVC output)."""
    return validation_dir() / f"{symbol}_{tier}.json"


def details_dir(symbol: str, tier: str) -> Path:
    """Full Great Expectations result (result.json) and Data Docs (data_docs/index.html)."""
    return validation_dir() / f"{symbol}_{tier}"


def tier_file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def current_md5s(symbol: str, tier: str) -> dict[str, str]:
    """The md5s a record must match: the tier parquet and its split file as they are on disk now."""
    return {
        "dataset_md5": tier_file_md5(paths.tier_path(symbol, tier)),
        "splits_md5": tier_file_md5(paths.splits_path(symbol, tier)),
    }


_MD5_KEYS = ("dataset_md5", "splits_md5")


def ensure_validated(symbol: str, tier: str) -> dict[str, Any]:
    """Raise unless the tier files on disk are exactly the ones the suite passed."""
    path = summary_path(symbol, tier)
    if not path.is_file():
        raise TierHpoError(f"{symbol}_{tier} has not passed validation; run `tierhpo validate --tier {tier}`")
    regenerate = f"regenerate it with `tierhpo validate --tier {tier}`"
    try:
        summary = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise TierHpoError(f"cannot read the validation record {path} ({exc.strerror or exc}); {regenerate}") from None
    except UnicodeDecodeError as exc:
        raise TierHpoError(
            f"{path} is not a readable validation record (not UTF-8 at byte offset {exc.start}); {regenerate}"
        ) from None
    except json.JSONDecodeError as exc:
        raise TierHpoError(
            f"{path} is not a readable validation record (invalid JSON at line {exc.lineno}, column {exc.colno}: "
            f"{exc.msg}); {regenerate}"
        ) from None
    if not isinstance(summary, dict) or not {"success", *_MD5_KEYS} <= set(summary):
        raise TierHpoError(
            f"{path} is not a validation record written by tierhpo validate (it lacks success/dataset_md5/"
            f"splits_md5); {regenerate}"
        )
    current = current_md5s(symbol, tier)
    if not summary.get("success") or any(
        summary.get(k) != v for k, v in current.items()
    ):
        raise TierHpoError(
            f"{symbol}_{tier} changed since it was validated; rebuild it from data/raw with "
            f"`tierhpo tiers --tier {tier}` and then `tierhpo validate --tier {tier}` (or `dvc repro validate@{tier}`)"
        )
    return summary
