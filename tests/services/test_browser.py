"""Every page a user opens, in a real headless Chromium, driven over the DevTools protocol.

A real tiny ablation (2 settings x 2 seeds, a few iterations) runs through the DAG and its real
ingest; then ``mlflow server`` serves the SQLite store on loopback and Chromium (Debian's package,
no browser download) opens:

* the HTML report: every figure image loaded (no broken image), every run link resolving to a
  run of the store (checked through the server's REST API, and one opened in the UI);
* the MLflow runs table of the experiment, with its metric columns;
* a run's training loss curve (``train/loss``, one point per logged iteration).

Screenshots are kept under ``$BROWSER_SCREENSHOTS`` (default ``.test-artifacts/screenshots/``) as CI
artefacts.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.services.local_slurm import free_port
from tests.workflow.conftest import snakemake, tiny_ablation, write_config

pytestmark = [pytest.mark.services, pytest.mark.slow]

# never the checkout's results/ (the demo's; tests/conftest.py fails a run that changes it)
SHOTS = Path(os.environ.get("BROWSER_SCREENSHOTS", REPO / ".test-artifacts" / "screenshots"))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited: {proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{what} did not answer at {url}"
            time.sleep(0.5)


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (aiohttp websocket)."""

    def __init__(self, binary: str, profile: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--remote-debugging-port={self.port}", "--remote-debugging-address=127.0.0.1",
             f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        base = f"http://127.0.0.1:{self.port}"
        _wait_http(f"{base}/json/version", self.proc, "chromium")
        pages = json.loads(urllib.request.urlopen(f"{base}/json/list", timeout=5).read())
        self.ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self.loop = asyncio.new_event_loop()
        self.session = self.ws = None
        self.next_id = 0
        self.loop.run_until_complete(self._connect())

    async def _connect(self):
        import aiohttp

        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.ws_url, max_msg_size=0)

    async def _call(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        mine = self.next_id
        await self.ws.send_json({"id": mine, "method": method, "params": params or {}})
        while True:
            msg = json.loads((await self.ws.receive(timeout=120)).data)
            if msg.get("id") == mine:
                assert "error" not in msg, msg["error"]
                return msg["result"]

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(self._call(method, params))

    def js(self, expression: str):
        """Value of a JavaScript expression in the page (promises awaited)."""
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        assert "exceptionDetails" not in out, out["exceptionDetails"]
        return out["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'")

    def wait(self, condition: str, timeout: float = 90) -> None:
        """Wait until a JavaScript condition holds (the MLflow UI renders after its API calls)."""
        deadline = time.monotonic() + timeout
        while not self.js(f"Boolean({condition})"):
            assert time.monotonic() < deadline, f"timed out waiting for: {condition}"
            time.sleep(0.5)

    def text(self) -> str:
        return self.js("document.body.innerText")

    def screenshot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = SHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        async def _close():
            await self.ws.close()
            await self.session.close()

        self.loop.run_until_complete(_close())
        self.loop.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def check_report_page(browser: Browser, page: Path, figures_dir: Path) -> list[str]:
    """Open the HTML report; every figure must be loaded. Returns the run links on the page."""
    browser.open(page.as_uri())
    images = browser.js("[...document.images].map(i => [i.getAttribute('src'), i.complete, "
                        "i.naturalWidth])")
    expected = sorted(p.name for p in figures_dir.glob("*.png"))
    manifest = json.loads((figures_dir / "figures.json").read_text())
    assert len(images) == len(manifest["figures"]) > 0
    broken = [src for src, complete, width in images if not (complete and width > 0)]
    assert broken == [], f"broken images on the report: {broken}"
    assert sorted(Path(src).name for src, _, _ in images) == expected
    text = browser.text()
    assert "95 % confidence interval" in text and "paired t-test" in text
    return browser.js("[...document.querySelectorAll('a.run')].map(a => a.href)")


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """A real tiny ablation run through the DAG: 2 settings x 2 seeds, ingested into SQLite."""
    root = tmp_path_factory.mktemp("browser")
    config = tiny_ablation(root, name="browser", iters=4)
    config["grid"]["seed"] = [0, 1]
    config["stages"]["benchmark"] = False
    proc = snakemake(root, write_config(root / "browser.yaml", config), timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, config


@pytest.fixture(scope="module")
def mlflow_ui(ablation):
    root, config = ablation
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", config["mlflow"]["tracking_uri"],
         "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/health", server, "mlflow server", timeout=400)  # slow on 2 cores
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = chromium()
    if binary is None:
        pytest.skip("Chromium missing: apt-get install -y chromium")
    b = Browser(binary, tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


def _api(base: str, path: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}", timeout=30).read())


def test_report_figures_load_and_every_run_link_resolves(ablation, mlflow_ui, browser, tmp_path):
    from pipelines.analysis.data import load_runs
    from pipelines.reports.html_report import build_report

    root, config = ablation
    runs = load_runs(config["mlflow"]["tracking_uri"], "browser")
    page = build_report(runs, tmp_path / "report", ui=mlflow_ui, log=lambda *_: None)
    links = check_report_page(browser, page, tmp_path / "report" / "figures")
    browser.screenshot("report")
    assert len(links) >= len(runs) == 4  # each run linked (front table and settings table)
    for link in sorted(set(links)):
        assert link.startswith(f"{mlflow_ui}/#/experiments/")
        path, query = link.split("?", 1)  # the run's page in the model-training sidebar
        assert query == "workflowType=machine_learning"
        exp_id, run_id = path.split("/#/experiments/")[1].split("/runs/")
        got = _api(mlflow_ui, f"runs/get?run_id={run_id}")["run"]
        assert got["info"]["experiment_id"] == exp_id
        assert got["info"]["run_name"] in set(runs["run_id"])
    # one link opened in the UI shows that run
    first = sorted(set(links))[0]
    name = _api(mlflow_ui, f"runs/get?run_id={first.split('?')[0].rsplit('/', 1)[1]}")["run"][
        "info"]["run_name"]
    browser.open(first)
    browser.wait(f"document.body.innerText.includes({json.dumps(name)})")
    browser.screenshot("run_page")


def _experiment_id(base: str) -> str:
    return _api(base, "experiments/get-by-name?experiment_name=browser")["experiment"][
        "experiment_id"]


def test_mlflow_runs_table_shows_metric_columns(ablation, mlflow_ui, browser):
    """What a person does: open the experiment, expand the parent run, show the metrics."""
    browser.call("Emulation.setDeviceMetricsOverride", width=4000, height=1200,
                 deviceScaleFactor=1, mobile=False)
    try:
        browser.open(f"{mlflow_ui}/#/experiments/{_experiment_id(mlflow_ui)}/runs")
        browser.wait("document.body.innerText.includes('matching runs')", timeout=240)
        browser.wait("document.querySelectorAll('[role=row] button.du-bois-light-btn-icon-only')"
                     ".length > 0", timeout=120)
        # the child runs sit under the ablation's parent run: expand it
        browser.js("document.querySelector('[role=row] button.du-bois-light-btn-icon-only')"
                   ".click()")
        names = ("baseline-seed0", "baseline-seed1")
        browser.wait(" && ".join(f"document.body.innerText.includes({json.dumps(n)})"
                                 for n in names), timeout=120)
        # MLflow 3 hides metric columns until asked: "Show more columns" -> tick "Metrics"
        browser.js("[...document.querySelectorAll('button, [role=button]')].filter(e => "
                   "e.innerText.includes('Show more columns'))[0].click()")
        browser.wait("document.querySelector('span[title^=\"Metrics (\"]') !== null")
        browser.js("document.querySelector('span[title^=\"Metrics (\"]').parentElement"
                   ".querySelector('.du-bois-light-tree-checkbox').click()")
        browser.call("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape",
                     windowsVirtualKeyCode=27)
        headers = "[...document.querySelectorAll('[role=columnheader]')].map(e => e.innerText)"
        browser.wait(f"{headers}.includes('gflops_total') && {headers}.includes('miou')")
        browser.screenshot("mlflow_runs_table")
        # a metric cell of a child run holds a number
        cells = browser.js("[...document.querySelectorAll('[role=gridcell]')].map(e => "
                           "e.innerText)")
        assert any(c.replace(".", "", 1).isdigit() for c in cells)
    finally:
        browser.call("Emulation.clearDeviceMetricsOverride")


def test_the_printed_mlflow_link_lands_on_the_runs_with_metric_columns(ablation, mlflow_ui,
                                                                        tmp_path):
    """A person's first visit: a fresh browser profile, the link `make ui` prints, no clicks."""
    root, config = ablation
    port = mlflow_ui.rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "pipelines", "ui", "--link-only", "--tracking-uri",
                          config["mlflow"]["tracking_uri"], "--experiment", "browser",
                          "--port", port], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip().split(" open ", 1)[1]
    assert link.startswith(f"{mlflow_ui}/#/experiments/{_experiment_id(mlflow_ui)}/runs?")
    fresh = Browser(chromium(), tmp_path / "fresh-profile")
    try:
        fresh.call("Emulation.setDeviceMetricsOverride", width=1600, height=900,
                   deviceScaleFactor=1, mobile=False)
        fresh.open(link)
        headers = "[...document.querySelectorAll('[role=columnheader]')].map(e => e.innerText)"
        fresh.wait(f"document.body && {headers}.includes('miou') && "
                   f"{headers}.includes('gflops_total')", timeout=240)
        fresh.wait("document.body.innerText.includes('baseline-seed1')")
        fresh.screenshot("mlflow_landing")
        text = fresh.text()
        # the grid runs, flat (no parent row to expand), and the model-training sidebar
        assert "4 matching runs" in text
        assert "Model registry" in text and "Judges" not in text and "Detect Issues" not in text
        cells = fresh.js("[...document.querySelectorAll('[role=gridcell]')].map(e => "
                         "e.innerText)")
        assert any(c.replace(".", "", 1).isdigit() for c in cells)
    finally:
        fresh.close()


LOSS_CHART = """(() => {
  const title = [...document.querySelectorAll('*')].filter(e => e.children.length === 0 &&
      e.innerText === 'loss')[0];
  if (!title) return null;
  title.scrollIntoView({block: 'center'});
  for (let n = title, i = 0; i < 12 && n; i++, n = n.parentElement) {
    const line = n.querySelector && n.querySelector('.js-plotly-plot path.js-line');
    if (line) return line.getAttribute('d').split('L').length;
  }
  return null;
})()"""


# MLflow 3 draws a section's charts lazily, as they scroll into view (a real run has about 17
# train charts, `loss` among the last): scroll the page's scrolling panes a step at a time,
# as a person would
SCROLL_STEP = """(() => {
  for (const e of document.querySelectorAll('*')) {
    const overflow = getComputedStyle(e).overflowY;
    if ((overflow === 'auto' || overflow === 'scroll') && e.scrollHeight > e.clientHeight + 10)
      e.scrollTop += 400;
  }
  window.scrollBy(0, 400);
})()"""


def _scroll_until(browser: Browser, condition: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not browser.js(f"Boolean({condition})"):
        assert time.monotonic() < deadline, f"timed out scrolling for: {condition}"
        browser.js(SCROLL_STEP)
        time.sleep(1.0)


def test_a_runs_loss_curve_is_drawn(ablation, mlflow_ui, browser):
    exp_id = _experiment_id(mlflow_ui)
    found = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{mlflow_ui}/api/2.0/mlflow/runs/search", method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps({"experiment_ids": [exp_id],
                         "filter": "tags.`pipelines.run_id` = 'baseline-seed0'"}).encode()),
        timeout=30).read())["runs"][0]
    run_id = found["info"]["run_id"]
    history = _api(mlflow_ui, f"metrics/get-history?run_id={run_id}&metric_key=train/loss")
    assert len(history["metrics"]) >= 4  # one point per logged iteration
    # the run page's "Model metrics" tab: a "train" section with the chart "loss"
    browser.open(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{run_id}/model-metrics")
    try:
        browser.wait("document.body.innerText.includes('Model metrics')", timeout=240)
        _scroll_until(browser, f"{LOSS_CHART} !== null", timeout=240)
    except AssertionError:
        browser.screenshot("loss_curve_missing")  # what the page showed instead, for CI
        raise
    assert browser.js(LOSS_CHART) >= len(history["metrics"])  # M + one L per further point
    browser.screenshot("loss_curve")
