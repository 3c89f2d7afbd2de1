"""A copied ``stores/`` folder made self-contained with ``tierhpo stores relocate --from OLD``.

MLflow keeps artifact locations absolute, so a copy still points at the original folders until
relocated; afterwards the original can be deleted and ``models:/`` URIs load from the copy.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import use_stores
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from common import paths
from pipelines.cli import app


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input * 2


def run_app(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tierhpo", *args])
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def point_at(monkeypatch, stores) -> str:
    use_stores(monkeypatch, stores)
    return f"sqlite:///{stores / 'mlflow.db'}"


def load_and_predict(uri: str) -> list[float]:
    with paths.mlflow_fluent_tracking():
        assert mlflow.get_tracking_uri() == uri
        model = mlflow.pyfunc.load_model("models:/tierhpo-reloc/1")
    return model.predict(pd.DataFrame({"x": [1.0, 2.0]}))["x"].tolist()


def test_relocated_copy_loads_models_after_the_original_is_deleted(isolated_stores, tmp_path, monkeypatch, capsys):
    original = isolated_stores
    client = MlflowClient(paths.mlflow_tracking_uri())
    experiment = client.create_experiment("reloc", artifact_location=f"{paths.mlflow_artifact_root()}/reloc")
    with paths.mlflow_fluent_tracking():
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text("hello", "note.txt")
            info = mlflow.pyfunc.log_model(name="model", python_model=Doubler())
        mlflow.register_model(info.model_uri, "tierhpo-reloc")

    copy = tmp_path / "moved" / "stores"
    shutil.copytree(original, copy)
    uri = point_at(monkeypatch, copy)
    code, out, err = run_app(monkeypatch, capsys, "stores", "relocate", "--from", str(original))
    assert code == 0, err
    assert "experiments.artifact_location: 1" in out and "runs.artifact_uri: 1" in out
    assert "model_versions.storage_location: 1" in out and "logged_models.artifact_location: 1" in out

    shutil.rmtree(original)
    assert load_and_predict(uri) == [2.0, 4.0]
    moved = MlflowClient(uri)
    assert moved.get_experiment(experiment).artifact_location == (copy / "mlartifacts" / "reloc").as_uri()
    assert moved.get_run(run.info.run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri() + "/")
    assert moved.get_model_version_download_uri("tierhpo-reloc", "1").startswith(copy.as_uri() + "/")
    (tmp_path / "dl").mkdir()
    note = moved.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(note).read_text() == "hello"
    assert not original.exists(), "loading from the copy wrote into the original store"
    assert str(original) not in "".join(p.read_text() for p in copy.rglob("MLmodel"))


def test_unrelocated_copy_still_points_at_the_original(isolated_stores, tmp_path, monkeypatch):
    """The problem relocate solves: without it the copy's model is gone with the original."""
    original = isolated_stores
    client = MlflowClient(paths.mlflow_tracking_uri())
    experiment = client.create_experiment("reloc", artifact_location=f"{paths.mlflow_artifact_root()}/reloc")
    with paths.mlflow_fluent_tracking():
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(name="model", python_model=Doubler())
        mlflow.register_model(info.model_uri, "tierhpo-reloc")
    copy = tmp_path / "moved" / "stores"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    uri = point_at(monkeypatch, copy)
    with pytest.raises(MlflowException, match="No such artifact") as gone:  # the original's folder is gone
        load_and_predict(uri)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_wrong_from_is_one_line(isolated_stores, tmp_path, monkeypatch, capsys):
    MlflowClient(paths.mlflow_tracking_uri()).create_experiment(
        "reloc", artifact_location=f"{paths.mlflow_artifact_root()}/reloc")
    code, _, err = run_app(monkeypatch, capsys, "stores", "relocate", "--from", str(tmp_path / "elsewhere"))
    assert code == 2
    assert "nothing in" in err and "wrong --from?" in err
