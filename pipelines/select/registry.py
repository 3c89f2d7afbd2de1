"""One model to serve per symbol and horizon: ``tierhpo-{SYMBOL}-h{H}`` with ``@candidate`` and ``@champion``.

``candidate`` always names the best cell (best validation AUC among the registered cells), so
``models:/tierhpo-SPY-h1@candidate`` works on every run. ``champion`` names it only when it passed
the gate (``decide``); otherwise the alias is removed and the model's ``champion_decision`` tag and
description say why. The version is a copy of the cell's promoted version
(``MlflowClient.copy_model_version``), tagged with its source; rerunning finds that copy instead
of making another. The symbol is in the name, so another symbol's runs never compete.
"""

from __future__ import annotations

import contextlib
from typing import Any

from training.selection_record import SelectionRecord

CANDIDATE, CHAMPION = "candidate", "champion"


def grid_model_name(symbol: str, horizon: int) -> str:
    return f"tierhpo-{symbol}-h{horizon}"


def pick_candidate(record: SelectionRecord, registered: dict[str, tuple[str, int] | None]) -> str | None:
    """The best cell's key if it is registered, else the registered cell with the best val AUC."""
    best = record.best_cell.key
    if registered.get(best):
        return best
    ranked = sorted((c for c in record.cells if registered.get(c.key)), key=lambda c: -c.val_auc)
    return ranked[0].key if ranked else None


def _find_copy(client: Any, name: str, source: str) -> Any | None:
    for mv in client.search_model_versions(f"name = '{name}'"):
        if (mv.tags or {}).get("source_model") == source:
            return mv
    return None


def apply_aliases(client: Any, record: SelectionRecord, registered: dict[str, tuple[str, int] | None]) -> dict[str, Any]:
    """Set ``candidate`` (and ``champion`` if the gate passed) on the grid model; the registry part of the output."""
    from mlflow.exceptions import MlflowException

    name = grid_model_name(record.symbol, record.horizon)
    key = pick_candidate(record, registered)
    if key is None:
        return {"name": name, "candidate": None, "champion": None,
                "decision": "no alias: no cell of the grid has a registered model (all degenerate?)"}
    src_name, src_version = registered[key]  # type: ignore[misc]
    source = f"{src_name}/{src_version}"
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name, tags={"symbol": record.symbol, "horizon": str(record.horizon)},
                                       description=f"{record.symbol}, horizon {record.horizon}: the grid's best cell "
                                                   "(@candidate) and, when it passes the baseline gate, @champion.")
    mv = _find_copy(client, name, source) or client.copy_model_version(f"models:/{source}", name)
    tier, budget = key.split("/")
    for k, v in {"source_model": source, "tier": tier, "budget": budget, "symbol": record.symbol,
                 "horizon": str(record.horizon)}.items():
        client.set_model_version_tag(name, mv.version, k, v)
    champion = key == record.best_cell.key and record.gate.passed
    decision = (f"champion: {key}; {record.gate.reason}" if champion else
                f"no champion: {record.gate.reason}" if key == record.best_cell.key else
                f"no champion: the best cell {record.best_cell.key} is not registered; candidate is {key}")
    client.update_model_version(name, mv.version, description=decision)
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    if champion:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    else:
        with contextlib.suppress(MlflowException):  # there was no champion alias
            client.delete_registered_model_alias(name, CHAMPION)
    client.set_registered_model_tag(name, "champion_decision", decision[:4000])
    return {"name": name, "version": int(mv.version), "source": source, "candidate": key,
            "champion": key if champion else None, "decision": decision}
