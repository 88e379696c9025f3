"""A real MLflow tracking server on loopback: a search logs to it over HTTP; its REST API sees it,
and so does its web UI in a real browser (Debian's chromium, driven by Playwright)."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from helpers import MlflowServer, cli_env


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("server")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def logged(server, tmp_path_factory, cache_dir) -> tuple[str, subprocess.CompletedProcess]:
    """A 2-trial search logged to the server; returns the folder it ran in and the process."""
    tmp_path = tmp_path_factory.mktemp("search")
    done = subprocess.run(
        [sys.executable, "-m", "histo_exp", "debug=fast", "tuner.max_trials=2", "eval.bootstrap=50",
         "data.synthetic.patients=6", "data.synthetic.patches_per_patient=40",
         f"logger.tracking_uri={server}"],
        cwd=tmp_path, env=cli_env(cache_dir), capture_output=True, text=True, timeout=600,
    )
    return tmp_path, done


def search_and_trials(server: str) -> tuple[str, str, dict[str, dict[str, str]]]:
    """The experiment id, the search run id, and each run's tags, through the REST API."""
    exp = api(server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=histo_exp")["experiment"]
    runs = api(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    search = [rid for rid, t in tags.items() if t.get("histo_exp.role") == "search"]
    return exp["experiment_id"], search[0], tags


def test_a_search_logs_to_a_tracking_server(server, logged):
    tmp_path, done = logged
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MLflow UI: {server}" in done.stdout + done.stderr
    _, search, tags = search_and_trials(server)
    trials = [rid for rid, t in tags.items() if t.get("histo_exp.role") == "trial"]
    assert [rid for rid, t in tags.items() if t.get("histo_exp.role") == "search"] == [search]
    assert len(trials) == 2 and all(tags[t]["mlflow.parentRunId"] == search for t in trials)
    files = api(server, f"/api/2.0/mlflow/artifacts/list?run_id={search}")["files"]
    assert {"model", "roc.png", "maps"} <= {f["path"] for f in files}
    assert not (tmp_path / "mlruns").exists()  # nothing went to a local store


CHROMIUM = os.environ.get("HISTO_EXP_CHROMIUM") or shutil.which("chromium")


# Flags for a closed network: without the background ones Chromium keeps calling Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync",
                 "--disable-component-update", "--no-first-run"]


@pytest.mark.skipif(not CHROMIUM, reason="no chromium: `make browser` installs Debian's (make test does)")
def test_the_ui_shows_the_search_and_its_trials(server, logged):
    """Open the experiment page, expand the search run, see its trial runs; keep a screenshot.

    ``HISTO_EXP_SCREENSHOT=docs/mlflow-ui.png`` also writes it there (``make screenshot``).
    """
    from playwright.sync_api import sync_playwright

    tmp_path, done = logged
    assert done.returncode == 0, done.stderr[-3000:]
    exp_id, search_id, tags = search_and_trials(server)
    search_name = "histo_exp-adam"
    trial_names = sorted(f"trial-{t['histo_exp.trial_id']}" for t in tags.values()
                         if t.get("mlflow.parentRunId") == search_id)
    assert trial_names == ["trial-0", "trial-1"]
    shot = tmp_path / "mlflow-ui.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 560})
            page.goto(f"{server}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
            row = page.locator(".ag-row", has_text=search_name).first
            row.wait_for(timeout=60_000)
            for name in trial_names:  # nested runs start folded under their search run
                assert not page.get_by_role("link", name=name, exact=True).is_visible()
            close = page.get_by_role("button", name="Close")  # the assistant panel, if it opens
            if close.count():
                close.first.click()
            row.locator("button[data-component-id*='runnamecellrenderer']").click()
            for name in trial_names:
                page.get_by_role("link", name=name, exact=True).wait_for(timeout=20_000)
            page.get_by_role("button", name="Columns", exact=True).click()
            menu = page.get_by_role("dialog")
            for column in ("Dataset", "Source", "Models", "best_val_auc", "test_auc", "val_auc"):
                menu.get_by_text(column, exact=True).click()
            page.keyboard.press("Escape")
            page.locator("[col-id='metrics.`test_auc`']").first.wait_for(timeout=10_000)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("HISTO_EXP_SCREENSHOT"):
        shutil.copy(shot, os.environ["HISTO_EXP_SCREENSHOT"])
