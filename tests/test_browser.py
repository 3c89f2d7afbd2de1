"""What a user sees in a browser: the MLflow UI and optuna-dashboard on a tiny real study.

One module-level study (the tiny HPO of ``hpo_tiny``: real trainer, real SQLite MLflow and Optuna
stores, nested trial runs) plus a registered model ``tierhpo-SPY-h1`` with the alias
``candidate`` (set here through ``MlflowClient``, as ``tierhpo select`` sets it on the real grid).
``mlflow ui`` and ``optuna-dashboard`` serve those stores on free local ports; Debian's
``/usr/bin/chromium``, driven by Playwright (which never downloads a browser here), looks at them.

Screenshots go to ``$TIERHPO_SCREENSHOTS`` (default ``test-artifacts/screenshots/``, git-ignored).
Without Chromium the module is skipped, except under CI (``CI`` set), where it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hpo_tiny import settings, tiny_data, tiny_spec
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
BIN = Path(sys.executable).parent  # the venv's mlflow and optuna-dashboard
TIMEOUT_S = 60
TIMEOUT_MS = TIMEOUT_S * 1000
MODEL = "tierhpo-SPY-h1"
ALIAS = "candidate"

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set but {CHROMIUM} is missing: .ci/run installs Debian's chromium package")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests need it",
                allow_module_level=True)
from playwright.sync_api import Locator, Page, sync_playwright  # noqa: E402  (after the Chromium check)


def screenshot(page: Page, name: str, element: Locator | None = None) -> Path:
    """The page (or one element of it) as ``$TIERHPO_SCREENSHOTS/<name>.png``."""
    directory = Path(os.environ.get("TIERHPO_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    if element is None:
        page.screenshot(path=str(path), full_page=True)
    else:
        element.scroll_into_view_if_needed()
        element.screenshot(path=str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess in its own process group (``mlflow ui`` forks uvicorn workers)."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, ready_path: str,
                 extra_env: dict[str, str] | None = None):
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(extra_env or {})
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait(ready_path)

    def _wait(self, ready_path: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url}{ready_path} within {TIMEOUT_S} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # workers left behind by a parent that exited first
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study (3 trials, 2 epochs each) and the registered model with its alias."""
    from training.search.study import run_study

    root = tmp_path_factory.mktemp("browser")
    stores = root / "stores"
    stores.mkdir()
    storage, mlflow_uri = f"sqlite:///{stores / 'optuna.db'}", f"sqlite:///{stores / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIERHPO_STORE_DIR", str(stores))
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        mp.setenv("TIERHPO_OPTUNA_STORAGE", storage)
        data = tiny_data()
        spec = tiny_spec(data)
        result = run_study(spec, data, 3, storage, settings=settings(mlflow_uri))  # with the parent's plots/
    client = MlflowClient(mlflow_uri)
    runs = {r.info.run_name: r for r in client.search_runs([result.experiment_id])}
    best = client.get_run(result.best_run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, best.info.artifact_uri, run_id=best.info.run_id)
    client.set_registered_model_alias(MODEL, ALIAS, version.version)
    return {"root": root, "storage": storage, "mlflow_uri": mlflow_uri, "client": client, "result": result,
            "study_name": spec.study_name, "runs": runs, "version": version.version,
            "epochs": spec.train.max_epochs}


@pytest.fixture(scope="module")
def mlflow_ui(study):
    port = free_port()
    server = Server("mlflow ui", [str(BIN / "mlflow"), "ui", "--backend-store-uri", study["mlflow_uri"],
                                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    port, study["root"] / "mlflow-ui.log", "health",
                    # No server-side job runner (online scoring, trace archival): nothing here uses
                    # it, and its worker makes the server take ~13 s to stop.
                    {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dashboard(study):
    port = free_port()
    server = Server("optuna-dashboard", [str(BIN / "optuna-dashboard"), study["storage"],
                                         "--host", "127.0.0.1", "--port", str(port)],
                    port, study["root"] / "optuna-dashboard.log", "api/studies")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(mlflow_ui, dashboard):
    """Started after the servers, so closed before them: a server stops at once, with no
    browser connection left open to wait for."""
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def ml_view(url: str) -> str:
    """MLflow 3.17's UI opens a fresh browser on its GenAI view whatever the experiment's
    ``mlflow.experimentKind`` tag says; ``workflowType=machine_learning`` asks for the
    "Model training" view (runs, model metrics, registry), as the toggle in its sidebar does."""
    return f"{url}{'&' if '?' in url else '?'}workflowType=machine_learning"


def test_runs_page_shows_the_study_run_expandable_to_its_trials(study, mlflow_ui, page):
    experiment_id = study["result"].experiment_id
    page.goto(mlflow_ui.url + ml_view(f"#/experiments/{experiment_id}/runs"))
    parent = page.get_by_role("row").filter(has_text=study["study_name"])
    parent.wait_for()
    assert page.get_by_text("trial-000", exact=True).count() == 0  # nested runs start collapsed
    parent.locator('button[data-component-id*="runnamecellrenderer"]').click()  # the row's "+" toggle
    for number in range(3):
        page.get_by_role("link", name=f"trial-{number:03d}", exact=True).wait_for()
    page.get_by_text("4 matching runs").wait_for()
    screenshot(page, "mlflow-runs")


def test_trial_page_charts_val_auc_one_point_per_epoch(study, mlflow_ui, page):
    run = study["runs"]["trial-000"]
    experiment_id = study["result"].experiment_id
    history = study["client"].get_metric_history(run.info.run_id, "val/auc")
    assert [m.step for m in history] == list(range(1, study["epochs"] + 1))

    page.goto(mlflow_ui.url + ml_view(f"#/experiments/{experiment_id}/runs/{run.info.run_id}/model-metrics"))
    page.get_by_text("trial-000").first.wait_for()
    page.get_by_placeholder("Search metric charts").fill("val/auc")
    legend = page.get_by_text("trial-000 (val/auc)", exact=True)
    legend.wait_for()
    card = legend.locator("xpath=ancestor::*[.//*[contains(@class, 'js-plotly-plot')]][1]")
    plot = card.locator(".js-plotly-plot")
    plot.locator(".scatterlayer .trace .points path").first.wait_for()
    traces = plot.evaluate("el => el.data.map(t => ({x: t.x, y: t.y, mode: t.mode || ''}))")
    marked = [t for t in traces if "markers" in t["mode"]]
    assert marked, traces
    assert marked[0]["x"] == [m.step for m in history]
    assert marked[0]["y"] == pytest.approx([m.value for m in history])
    assert plot.locator(".scatterlayer .trace .points path").count() == len(history)
    screenshot(page, "mlflow-trial-val-auc")
    screenshot(page, "mlflow-trial-val-auc-chart", card)


def test_registry_lists_the_model_and_its_page_shows_the_alias(study, mlflow_ui, page):
    page.goto(mlflow_ui.url + ml_view("#/models"))
    row = page.get_by_role("row").filter(has_text=MODEL)
    row.wait_for()
    assert f"@ {ALIAS}" in " ".join(row.inner_text().split())
    page.keyboard.press("Escape")  # the "new model registry UI" announcement, if it pops up
    screenshot(page, "mlflow-models")

    page.goto(mlflow_ui.url + ml_view(f"#/models/{MODEL}"))
    version = page.get_by_role("row").filter(has_text=f"Version {study['version']}")
    version.wait_for()
    assert f"@ {ALIAS}" in " ".join(version.inner_text().split())
    page.keyboard.press("Escape")
    screenshot(page, "mlflow-model")


def test_dashboard_study_page_names_the_study_and_its_objective(study, dashboard, page):
    page.goto(dashboard.url + "dashboard")
    page.get_by_text(study["study_name"]).first.click()
    page.get_by_text(f"{study['study_name']} (id=").wait_for()
    page.get_by_text("val/auc", exact=True).first.wait_for()
    assert "/dashboard/studies/" in page.url
    screenshot(page, "optuna-dashboard-study")


def test_parent_run_shows_the_interactive_optuna_page_without_fetching_anything(study, mlflow_ui, page):
    """plots/optuna_plots.html in MLflow's artifact view (a sandboxed iframe on a blob: URL): the
    three Plotly figures draw from the embedded plotly.js, the browser asks nothing of any other
    host, and the parallel coordinates list batch_size by value (64 before 128, not as text)."""
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    result = study["result"]
    page.goto(mlflow_ui.url + ml_view(f"#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
                                      "/artifactPath/plots/optuna_plots.html"))
    frame = page.frame_locator("iframe.mlflow-html-iframe")
    plots = frame.locator(".js-plotly-plot")
    frame.locator("#parallel_coordinate .main-svg").first.wait_for()
    assert plots.count() == 3
    # Optuna draws each axis's ticks as annotations at x = the axis's index, bottom to top
    ticks = frame.locator("#parallel_coordinate").evaluate(
        """el => { const axis = el.layout.xaxis.ticktext.indexOf("batch_size");
                   return el.layout.annotations.filter(a => a.x === axis).sort((a, b) => a.y - b.y)
                            .map(a => a.text); }""")
    assert ticks == ["64", "128"]
    foreign = [u for u in requests if not u.startswith((mlflow_ui.url, "blob:", "data:", "about:"))]
    assert not foreign, foreign
    screenshot(page, "mlflow-parent-optuna-plots")
