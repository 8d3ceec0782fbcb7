"""MLflow's UI on lakeforge's tracking store (`lakeforge mlflow ui`), in headless Chromium.

The store holds real MLflow runs made through lakeforge's tracker (parameters, metrics
per epoch, a registered version); the test drives Debian's Chromium with Selenium to
the experiment's page and a run's metric charts, and saves screenshots of both into
its output folder.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lakehouse.config import load_config
from models.store import ModelRecord
from models.tracking import Tracker
from tests.helpers import free_port, small_job_env, wait_listening

BROWSER, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """Two finished runs and a registered version in a new store, and the UI serving it."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    port = free_port()
    env = {**small_job_env(root / "home"), "LAKEFORGE_TRACKING__UI_PORT": str(port)}
    tracker = Tracker(load_config(environ=env))
    staged = root / "model"
    staged.mkdir()
    (staged / "model.keras").write_bytes(b"weights")
    runs = {}
    for i, rate in enumerate((0.01, 0.1)):
        name = f"wine_mlp-v3-run{i}"
        mlrun = tracker.start(name, "wine_mlp", "mlp", "lakeforge.gold_wine", 3,
                              {"learning_rate": rate, "hidden": [16]})
        tracker.log_training(mlrun, {"loss": [1.1, 0.7 - i / 10, 0.4 - i / 10]}, 0,
                             {"accuracy": 0.8 + i / 10})
        tracker.log_model(mlrun, staged)
        tracker.finish(mlrun)
        runs[name] = mlrun
    record = ModelRecord("wine_mlp", 1, "mlp", {}, {}, "lakeforge.gold_wine", 3,
                         "wine_mlp-v3-run1", str(staged), dt.datetime.now(), mlrun)
    assert tracker.register(record, mlrun) == 1
    log = root / "ui.log"
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "jobs.cli", "mlflow", "ui"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, server, log, wait=120)
        yield f"http://127.0.0.1:{port}", tracker, runs
    finally:
        server.send_signal(signal.SIGTERM)          # lakeforge stops the server's group
        server.wait(timeout=60)


@pytest.fixture
def browser():
    if not (os.path.exists(BROWSER) and os.path.exists(DRIVER)):
        pytest.fail(f"{BROWSER} and {DRIVER} are installed by `make setup` (Debian's "
                    f"chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _shows(driver, *texts: str, seconds: float = 90) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(lambda d: all(t in d.page_source for t in texts))


@pytest.mark.slow
def test_the_ui_shows_the_runs_and_a_metric_chart(ui, browser, tmp_path, request):
    url, tracker, runs = ui
    browser.get(f"{url}/#/experiments/{tracker.experiment_id}")
    _shows(browser, *runs)                                # both runs, by their run ids
    shots = Path(request.config.rootpath) / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(tmp_path / "experiment.png"))

    first = runs["wine_mlp-v3-run0"]
    browser.get(f"{url}/#/experiments/{tracker.experiment_id}/runs/{first}/model-metrics")
    _shows(browser, "epoch_loss")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    charts = WebDriverWait(browser, 90).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot, canvas, svg.main-svg"))
    assert charts
    browser.save_screenshot(str(tmp_path / "metrics.png"))
    for name in ("experiment.png", "metrics.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        shutil.copy(tmp_path / name, shots / name)
    print(f"screenshots: {shots}")

    browser.get(f"{url}/#/models/wine_mlp")
    _shows(browser, "Version 1")


@pytest.mark.slow
def test_a_tracking_server_takes_runs_and_versions(ui, tmp_path):
    """`tracking.uri` at a server (the UI's, a real `mlflow server`): runs, metrics and a
    registered version go through its REST API."""
    url, local, _ = ui
    env = {**small_job_env(tmp_path / "home"), "LAKEFORGE_TRACKING__URI": url,
           "LAKEFORGE_TRACKING__EXPERIMENT": "team"}
    remote = Tracker(load_config(environ=env))
    assert remote.uri == url
    staged = tmp_path / "model"
    staged.mkdir()
    (staged / "model.keras").write_bytes(b"weights")
    mlrun = remote.start("iris_mlp-v1-abc", "iris_mlp", "mlp", "lakeforge.gold_iris", 1,
                         {"epochs": 2})
    remote.log_training(mlrun, {"loss": [0.9, 0.5]}, 0, {"accuracy": 0.9})
    remote.log_model(mlrun, staged)
    record = ModelRecord("iris_mlp", 1, "mlp", {}, {}, "lakeforge.gold_iris", 1,
                         "iris_mlp-v1-abc", str(staged), dt.datetime.now(), mlrun)
    assert remote.register(record, mlrun) == 1
    remote.finish(mlrun)
    seen = local.client.get_run(mlrun)                     # the server's store has it
    assert seen.info.status == "FINISHED" and seen.data.metrics["accuracy"] == 0.9
    assert [int(v) for v in local.versions("iris_mlp")] == [1]
