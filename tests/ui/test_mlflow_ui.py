"""The MLflow UI as a researcher meets it, in a real headless Chromium (Debian's package driven by
Playwright, no browser download) against a real `mlflow server` on the store of a small real
sweep: the link facefuse prints lands on the runs table, the parent expands to its trials, a
beta column can be shown, and a trial's page has its ROC picture and its logged model."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian's chromium is not installed at /usr/bin/chromium "
                              "(.ci/run installs it: apt-get install -y chromium)"),
]
TIMEOUT_MS = 90_000  # two busy cores: the UI's first render can take tens of seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui_server(real_sweep_store: dict, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """A real `mlflow server --workers 1` on the sweep's store, on a free port, stopped by PID."""
    port = _free_port()
    log = tmp_path_factory.mktemp("ui") / "server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", real_sweep_store["uri"]],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own process group: only what we started
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_runs_table_trials_beta_roc_and_model(real_sweep_store: dict, ui_server: str,
                                              tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from facefuse.tracking.names import experiment_ui_url

    result = real_sweep_store["result"]
    trial_names = []
    from mlflow import MlflowClient

    client = MlflowClient(real_sweep_store["uri"])
    for t in result.trials:
        trial_names.append(client.get_run(t.run_id).info.run_name)
    assert all(re.match(r"t\d\d beta=", n) for n in trial_names), trial_names

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        shots: list[Path] = []

        def step(name: str, body: Callable[[], Any]) -> Any:
            try:
                return body()
            except Exception:
                shot = tmp_path / f"ui-failed-{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                shots.append(shot)
                print(f"\nUI step {name!r} failed; screenshot: {shot}")
                raise

        try:
            # The link the sweep command prints.
            url = experiment_ui_url(ui_server, result.experiment_id)
            step("open", lambda: page.goto(url))
            step("runs table", lambda: page.get_by_role("link", name=result.sweep_id)
                 .wait_for())
            body = page.inner_text("body")
            assert "No data available" not in body and "Token Usage" not in body  # not GenAI
            assert page.get_by_role("columnheader", name="Run Name").count() >= 1
            # 1 parent + 3 trials, the trials collapsed under it
            assert page.get_by_text("4 matching runs").count() == 1
            assert page.get_by_text(trial_names[0], exact=True).count() == 0

            def expand() -> None:
                row = page.locator("[role=row]", has_text=result.sweep_id)
                row.locator("button").first.click()
                for name in trial_names:
                    page.get_by_role("link", name=name, exact=True).wait_for()

            step("expand parent", expand)

            def beta_column() -> None:
                page.get_by_role("button", name="Columns", exact=True).click()
                page.get_by_placeholder("Search columns").fill("beta")
                page.get_by_text("beta", exact=True).last.click()
                page.keyboard.press("Escape")
                page.get_by_role("columnheader", name="beta").first.wait_for()

            step("beta column", beta_column)
            # the beta cells of the trial rows hold the trials' betas
            first = client.get_run(result.trials[0].run_id)
            # the grid draws a row in parts (pinned name, the rest); its run id joins them
            row = page.locator(f"[role=row][row-id='{first.info.run_id}']")
            beta = row.locator("[role=gridcell][col-id='params.`beta`']").first.inner_text()
            assert beta.strip() == first.data.params["beta"]
            # the Dataset and Models columns are filled for trials
            datasets = row.locator("[role=gridcell][col-id='attributes.`Dataset`']").first
            assert "synth_train" in datasets.inner_text() and "Train" in datasets.inner_text()
            models = row.locator("[role=gridcell][col-id='attributes.`Models`']").first
            assert models.inner_text().strip() == "model"

            def open_trial() -> None:
                page.get_by_role("link", name=first.info.run_name, exact=True).click()
                page.get_by_text(re.compile(r"Logged models \(1\)")).wait_for()

            step("open trial", open_trial)
            assert page.get_by_role("heading", name=first.info.run_name).count() >= 1 or \
                first.info.run_name in page.inner_text("body")

            def roc() -> None:
                page.get_by_role("tab", name="Artifacts").click()
                page.get_by_text("roc", exact=True).first.click()
                page.get_by_text("roc.png", exact=True).first.click()
                page.locator("img[src^='blob:']").first.wait_for()

            step("ROC picture", roc)
            assert page.get_by_text("roc/roc.png").count() >= 1
            size = page.locator("img[src^='blob:']").first.evaluate(
                "img => [img.naturalWidth, img.naturalHeight]")
            assert size[0] > 300 and size[1] > 300  # a real picture was decoded
        finally:
            browser.close()
