"""``tierhpo predict --source FILE``: the calibrated probability for the newest day of raw OHLCV.

* The source is read and validated like ``tierhpo ingest --source`` (``pipelines.ohlcv``: CSV or
  parquet, the same columns, bounded reading, one line naming the first bad row).
* The model is ``--model models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; by default
  ``models:/tierhpo-{data.symbol}-h{H}@champion``, else ``@candidate`` (``tierhpo select`` sets
  them), with H = ``--horizon`` (default 1). Its tier is the version's ``tier`` tag, its
  ``context_len`` and input columns come from the model's serving spec.
* ``training.recent.feature_window`` computes the tier's inputs as ``tierhpo tiers`` does and
  keeps the newest ``context_len`` days; the pyfunc turns them into one probability. The needed
  history is ``training.recent.history_needed`` (warm-up + context_len); shorter input is refused.

Prints one line: the newest day's date, the probability, ``max_excess_z`` and whether the window is
outside the training range (``training.serving``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import pandas as pd
import typer

from common import config, limits, paths
from common.errors import TierHpoError, shorten
from pipelines.ohlcv import canonical_ohlcv, read_source
from training.dataset import check_tier, load_data_config
from training.inputs import TiersConfig
from training.recent import feature_window, history_needed

CHAMPION, CANDIDATE = "champion", "candidate"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    m = _URI.match(uri.strip())
    if not m:
        raise TierHpoError(f"--model {shorten(uri)}: give models:/NAME@ALIAS or models:/NAME/VERSION")
    return ModelRef(m["name"], m["alias"], m["version"])


def default_name(symbol: str, horizon: int) -> str:
    """The grid model ``tierhpo select`` maintains (pipelines.select.registry.grid_model_name)."""
    return f"tierhpo-{symbol}-h{horizon}"


def resolve(client: Any, ref: ModelRef | None, symbol: str, horizon: int) -> tuple[ModelRef, Any]:
    """The model reference and its MLflow model version; one line when it does not exist."""
    from mlflow.exceptions import MlflowException

    if ref is None:
        name = default_name(symbol, horizon)
        for alias in (CHAMPION, CANDIDATE):
            try:
                return ModelRef(name, alias=alias), client.get_model_version_by_alias(name, alias)
            except MlflowException:
                continue
        raise TierHpoError(
            f"no model models:/{name}@{CHAMPION} or @{CANDIDATE} in {paths.mlflow_tracking_uri()}; run "
            "`tierhpo promote` and `tierhpo select`, or pass --model models:/NAME@ALIAS"
        )
    try:
        mv = (client.get_model_version_by_alias(ref.name, ref.alias) if ref.alias
              else client.get_model_version(ref.name, ref.version))
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TierHpoError(f"model {ref.uri} not found in {paths.mlflow_tracking_uri()}: {shorten(first)}") from None
    return ref, mv


def model_tier(mv: Any, ref: ModelRef) -> str:
    tier = (mv.tags or {}).get("tier")
    if not tier:
        raise TierHpoError(f"model {ref.uri} (version {mv.version}) has no 'tier' tag; register it with `tierhpo promote`")
    return check_tier(tier)


def read_ohlcv(source: str) -> tuple[pd.DataFrame, str]:
    where = shorten(str(source), 200).strip("'")
    return canonical_ohlcv(read_source(source, limits.MAX_INPUT_MB, limits.MAX_ROWS), where), where


def predict_newest(model: Any, ohlcv: pd.DataFrame, tier: str, *, use_adjusted: bool = True,
                   max_gap_days: int | None = None, where: str = "source") -> dict[str, Any]:
    """Pure given a loaded pyfunc: validated OHLCV -> the newest day's prediction."""
    spec = model.unwrap_python_model().spec
    window = feature_window(ohlcv, tier, spec.context_len, use_adjusted=use_adjusted,
                            max_gap_days=max_gap_days, where=where)
    missing = [c for c in spec.feature_names if c not in window.columns]
    if missing:
        raise TierHpoError(f"the model's inputs {missing[:3]} are not features of tier {tier}; check its 'tier' tag")
    out = model.predict(window[list(spec.feature_names)].reset_index(drop=True)).iloc[0]
    return {
        "date": f"{window.index[-1]:%Y-%m-%d}",
        "probability": float(out["probability"]),
        "max_excess_z": float(out["max_excess_z"]),
        "outside_training_range": bool(out["outside_training_range"]),
        "z_limit": float(spec.z_limit),
        "context_len": spec.context_len,
        "history_needed": history_needed(tier, spec.context_len),
        "rows": len(ohlcv),
    }


def format_line(result: dict[str, Any], ref: ModelRef, version: str, tier: str, horizon: str) -> str:
    flag = (f"OUTSIDE the training range (max_excess_z {result['max_excess_z']:.2f} > {result['z_limit']:g})"
            if result["outside_training_range"] else
            f"within the training range (max_excess_z {result['max_excess_z']:.2f} <= {result['z_limit']:g})")
    return (f"predict: {result['date']}: probability {result['probability']:.4f} (h{horizon}, {ref.uri} = version "
            f"{version}, tier {tier}, {result['history_needed']} of {result['rows']} days used); {flag}")


app = typer.Typer(add_completion=False)


@app.command()
def main(
    source: Annotated[str, typer.Option(help="Raw daily OHLCV of recent days (CSV or parquet, as for ingest); at least the tier's "
             "warm-up + context_len days (231 for a20/a50, 284 for a100 at context_len 32).")],
    model: Annotated[str | None, typer.Option(
        help="models:/NAME@ALIAS or models:/NAME/VERSION; default models:/tierhpo-{SYMBOL}-h{H}@champion, "
             "else @candidate.")] = None,
    horizon: Annotated[int, typer.Option(help="Horizon H of the default model name.")] = 1,
    symbol: Annotated[str | None, typer.Option(help="Symbol of the default model name; default data.symbol")] = None,
) -> None:
    """Print the newest day's calibrated probability from raw OHLCV of recent days."""
    import mlflow

    ref = parse_model_uri(model) if model else None
    if horizon < 1:
        raise TierHpoError(f"--horizon must be >= 1, got {horizon}")
    data = load_data_config(**({"symbol": symbol} if symbol else {}))
    cfg = config.load(TiersConfig, "tiers")
    ohlcv, where = read_ohlcv(source)
    with paths.mlflow_fluent_tracking() as uri:
        client = mlflow.MlflowClient(uri)
        ref, mv = resolve(client, ref, data.symbol, horizon)
        tier = model_tier(mv, ref)
        loaded = mlflow.pyfunc.load_model(f"models:/{ref.name}/{mv.version}")
    result = predict_newest(loaded, ohlcv, tier, use_adjusted=cfg.use_adjusted,
                            max_gap_days=data.max_gap_days, where=where)
    typer.echo(format_line(result, ref, str(mv.version), tier, (mv.tags or {}).get("horizon", str(horizon))))
