"""A real browser: Debian's headless Chromium driven by Playwright against `streamlit run` on a free port.
Loads the case explorer, switches a modality off, sees the prediction change, explains it, screenshots."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from core.paths import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(default_cohort, tmp_path):
    port = _free_port()
    env = {**os.environ, "RMD_REVIEWER_CODE": "demo", "RMD_REVIEW_DB": str(tmp_path / "review.sqlite3")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (make test installs it)")
def test_case_explorer_in_a_real_browser(server, out_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        page.goto(server, timeout=120_000)
        page.get_by_text("Predicted").first.wait_for(timeout=180_000)
        before = page.locator('[data-testid="stMetricValue"]').first.inner_text()
        assert before
        page.locator("label", has=page.get_by_role("switch", name="labs")).click()
        change = page.get_by_text("Largest change")
        change.wait_for(timeout=120_000)
        assert "→" in change.inner_text()
        page.get_by_text("Which test next").wait_for(timeout=120_000)
        page.get_by_role("button", name="Explain this prediction").click()
        page.get_by_text("Explained in").wait_for(timeout=300_000)
        page.get_by_text("Download case report").wait_for(timeout=60_000)
        time.sleep(1)
        shot = out_dir / "case_explorer.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 50_000
