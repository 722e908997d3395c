"""A real browser: Debian's headless Chromium driven by Playwright against one `streamlit run` on a free port
(one server and one browser for the whole module, each flow in its own browser context, i.e. its own
Streamlit session):

1. case explorer: a deep link opens the app's pages; a demo case → switch the labs off → upload a scan and a
   lab table with one bad unit → only that row refused → explain → switch the method (the heatmap controls
   keep their values) → download the case report;
2. upload a DICOM that carries patient identifiers → refused as the wrong kind of scan → override → a
   prediction, and no identifier anywhere on the page;
3. review: first sign-in (name, shared code, PIN twice) → answer every question of one item → save →
   reload → still signed in, at the next item;
4. study admin: a wrong code is refused; the right one (RMD_ADMIN_CODE) opens the results → export the
   ratings (CSV): the rating saved in 3 is there.

Each flow saves a full-page screenshot, 1440 px wide, in its test-output folder; with RMD_SCREENSHOTS=1
also in assets/screenshots/ (the README's pictures):

    RMD_SCREENSHOTS=1 .venv/bin/python -m pytest tests/test_browser.py

Locators are roles and visible texts, so that the pages can be reworked under the test.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from core.paths import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WIDTH, HEIGHT = 1440, 1000
SCREENSHOTS = ROOT / "assets" / "screenshots"
REVIEWER_CODE, ADMIN_CODE = "demo", "browser-test-admin"
REVIEWER, PIN = "Browser Tester", "2468"
ANSWERS = (4, 2, 5)  # relevance, usefulness, trust (the order the page asks them in), on a 1–5 scale
COMMENT = "browser test: evidence on the heatmap is clear"
SLOW = 300_000  # ms: a first explanation on a busy 2-core machine (model load, imports, SHAP's compilation)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (make test installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(env: dict[str, str], log: Path):
    """`streamlit run app.py` on a free port with `env` added; yields its URL, and stops it afterwards."""
    port = _free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start (log: {log})")
    if proc.poll() is not None:
        pytest.fail(f"streamlit exited with {proc.returncode} (log: {log})")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(default_cohort, tmp_path_factory):
    """One app for every flow, its review database a temporary file, the study admin enabled, no
    background explanations (RMD_REVIEW_WARM=0) competing with the browser for the CPU, and no file
    watcher (an edit elsewhere in the tree must not reload modules under a running test); the toolbar as a
    visitor sees it (no "Deploy" in the screenshots)."""
    tmp = tmp_path_factory.mktemp("browser")
    yield from _serve({"RMD_REVIEWER_CODE": REVIEWER_CODE, "RMD_ADMIN_CODE": ADMIN_CODE,
                       "RMD_REVIEW_DB": str(tmp / "review.sqlite3"), "RMD_REVIEW_WARM": "0"},
                      ROOT / "test-output" / "browser-server.log")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context: a new Streamlit session, downloads accepted."""
    context = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}, accept_downloads=True)
    context.set_default_timeout(60_000)
    pg = context.new_page()
    yield pg
    context.close()


@contextmanager
def _kept_on_failure(page, out_dir: Path):
    """On failure, the page as it was is kept in the test's output folder (failure.png, failure.txt)."""
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the original failure matters, not this one
            page.screenshot(path=str(out_dir / "failure.png"), full_page=True)
            (out_dir / "failure.txt").write_text(page.locator("body").inner_text(timeout=5_000))
        raise


# Shared between the review flow and the admin flow (which exports what the review flow saved).
saved: dict[str, str] = {}


def _idle(page, timeout: float = SLOW) -> None:
    """Wait until Streamlit has no script run in progress: no running indicator, no element drawn faded as
    stale (left from the run before)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidgetRunningIcon\"]')"
                           " && !document.querySelector('[data-stale=\"true\"]')", timeout=timeout)


def _screenshot(page, out_dir: Path, name: str) -> Path:
    """A full-page screenshot at 1440 px: the viewport is grown to the page's height first, because
    Streamlit scrolls its main area inside the window (a plain full-page shot would cut it off)."""
    _idle(page)
    height = page.evaluate("""() => Math.max(document.body.scrollHeight, ...Array.from(document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stSidebarContent"], section'))
        .map(e => e.scrollHeight))""")
    page.set_viewport_size({"width": WIDTH, "height": int(min(max(height, HEIGHT), 10_000))})
    page.wait_for_timeout(1_500)  # charts re-layout to the new size; a rerun just asked for gets going
    _idle(page)
    path = out_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    if os.environ.get("RMD_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)
    assert path.stat().st_size > 30_000  # a picture of a page, not a blank one
    return path


def _same_class(a: str, b: str) -> bool:
    """A class as the page shows it and as a file writes it (internal or display name)."""
    return re.sub(r"[\s_]+", " ", a).strip().lower() == re.sub(r"[\s_]+", " ", b).strip().lower()


def _download_report(page) -> tuple[str, str]:
    """Press "Download case report" and read the file: (its suggested name, its text)."""
    from playwright.sync_api import Error as PlaywrightError

    button = page.get_by_role("button", name=re.compile("Download case report"))
    button.wait_for(timeout=SLOW)
    for attempt in range(3):  # a page run just then gives the report a new address and cancels this one
        _idle(page)
        try:
            with page.expect_download(timeout=120_000) as download:
                button.click()
            return download.value.suggested_filename, Path(download.value.path()).read_text(encoding="utf-8")
        except PlaywrightError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# ---- 1. case explorer ----------------------------------------------------------------------------------
def _choose(page, label: str, option: str) -> None:
    """Pick an option of a selectbox (its list opens on a click; a click during a rerun may not open it)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=label)
    field = box.locator("input").first
    for _ in range(5):
        _idle(page)
        if field.input_value() == option:  # taken (a click while the page reran can be lost: then again)
            return
        field.click()
        page.wait_for_timeout(700)
        found = page.locator('[role="option"]', has_text=option)
        if found.count():
            found.first.click(timeout=10_000)
            page.wait_for_timeout(500)
        else:
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def _heatmap_controls(page) -> tuple[bool, str]:
    _idle(page)
    return (page.get_by_role("switch", name="Show heatmap").is_checked(),
            page.locator('[data-testid="stSlider"]').filter(has_text="Opacity").locator("input[type=range]")
            .get_attribute("value"))


def _predicted(page) -> str:
    """The predicted diagnosis as the page shows it: whole, never cut to fit a box."""
    box = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text=re.compile("^Predicted")).last
    text = box.inner_text().replace("Predicted", "", 1).strip()
    assert "…" not in text and text
    return text


def test_case_explorer_switch_labs_with_a_bad_unit_explain_switch_method_and_report(server, page, out_dir,
                                                                                      default_cohort):
    """Demo case → switch the labs off → upload a scan and a lab table with one bad unit → only that row is
    refused → explain → change the heatmap controls → switch the method and explain → the controls keep their
    values → download the report."""
    from playwright.sync_api import Error as PlaywrightError

    scan = (default_cohort / "images" / "RMD-00001.png").read_bytes()
    labs = b"name,value,unit\ncrp,8.5,mg/dL\nwbc,14.2,10^9/L\nsodium,131,mmol/L\ntroponin,0.5,mg/dL\n"
    with _kept_on_failure(page, out_dir):
        page.goto(f"{server}/model_card", timeout=120_000)  # a deep link: the app's pages, never the files of pages/
        page.get_by_role("heading", name="Model card").first.wait_for(timeout=SLOW)
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Case explorer" in nav and "common" not in nav.lower(), nav
        page.get_by_role("link", name="Case explorer").click()
        page.get_by_role("heading", name="Case explorer").first.wait_for(timeout=SLOW)
        page.get_by_text("Predicted").first.wait_for(timeout=SLOW)  # (the Model card says "Predicted" too:
        _idle(page)  # the explorer's first run must have ended, or the switch below interrupts it)
        page.get_by_role("switch", name="labs").wait_for()
        page.locator("label", has=page.get_by_role("switch", name="labs")).click()
        change = page.get_by_text("Largest change")
        change.wait_for(timeout=120_000)
        assert "→" in change.inner_text()
        page.get_by_text("Which test next").wait_for(timeout=120_000)
        assert _predicted(page)

        page.get_by_text("Upload your own", exact=True).click()
        scan_up = page.locator('[data-testid="stFileUploader"]').filter(has_text="DICOM").first
        scan_up.wait_for(timeout=120_000)
        scan_up.locator("input[type=file]").set_input_files({"name": "cxr.png", "mimeType": "image/png", "buffer": scan})
        page.get_by_text("Window preset").first.wait_for(timeout=120_000)  # the scan was read: its run has begun
        labs_up = page.locator('[data-testid="stFileUploader"]').filter(has_text="Lab table").first
        for attempt in range(3):  # a file given while a page run redraws the uploader can be dropped: give it again
            _idle(page)
            labs_up.locator("input[type=file]").set_input_files({"name": "labs.csv", "mimeType": "text/csv",
                                                                  "buffer": labs})
            try:
                page.get_by_text("1 value refused", exact=False).first.wait_for(timeout=60_000)
                break
            except PlaywrightError:
                if attempt == 2:
                    raise
        refusal = page.get_by_text("1 value refused", exact=False).first.inner_text()
        assert "troponin" in refusal and "mg/dL" in refusal and "other 3 labs are used" in refusal
        page.get_by_text("3 used, 1 refused", exact=False).first.wait_for(timeout=60_000)
        page.get_by_text("Predicted").first.wait_for(timeout=SLOW)
        _idle(page)
        predicted = _predicted(page)

        page.get_by_role("button", name="Explain this prediction").click()
        page.get_by_text("Explained in").first.wait_for(timeout=SLOW)
        assert _heatmap_controls(page) == (True, "0.55")
        page.locator('[data-testid="stSlider"]').filter(has_text="Opacity").locator("input[type=range]").focus()
        for _ in range(10):
            page.keyboard.press("ArrowRight")
        _idle(page)
        assert _heatmap_controls(page) == (True, "0.65")
        _choose(page, "Attribution method", "Gradient × input")
        _idle(page)
        page.get_by_role("button", name="Explain this prediction").click()
        page.get_by_text("Explained in").first.wait_for(timeout=SLOW)
        assert _heatmap_controls(page) == (True, "0.65")  # not reset to off / 0 by the switch

        name, report = _download_report(page)
        assert name.endswith(".html")
        assert "<html" in report.lower() and "case report" in report.lower()
        bold = re.findall(r"prediction: <b[^>]*>([^<]+)</b>", report)
        assert bold and _same_class(bold[0], predicted), (bold, predicted)  # the class the page shows
        assert "data:image/png;base64," in report  # the scan with its heatmap
        assert "Gradient × input" in report and "gradient_x_input" not in report and "e+0" not in report
        assert "Which test next" in report  # the note is missing: the report says what to acquire
        _screenshot(page, out_dir, "case_explorer")


# ---- 2. upload a DICOM ------------------------------------------------------------------------------------
def test_upload_a_dicom_shows_a_prediction_and_no_patient_identifiers(server, page, out_dir, identified_dicom):
    dicom, secrets = identified_dicom  # pydicom's CT_small with a PatientName, an MRN, … planted
    with _kept_on_failure(page, out_dir):
        page.goto(server, timeout=120_000)
        page.get_by_text("Predicted").first.wait_for(timeout=SLOW)
        page.get_by_text("Upload your own", exact=True).click()
        uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="DICOM").first
        uploader.wait_for(timeout=120_000)
        uploader.locator("input[type=file]").set_input_files(
            {"name": "scan.dcm", "mimeType": "application/dicom", "buffer": dicom})
        # a head CT for a chest radiograph model: refused with a reason, until the user overrides
        page.get_by_text("not the kind of scan this model was trained on").first.wait_for(timeout=120_000)
        override = page.get_by_text("Use it anyway", exact=False).first
        override.click()
        page.get_by_text("Predicted").first.wait_for(timeout=SLOW)
        page.get_by_text("Outside what this model was trained on").first.wait_for(timeout=60_000)
        _idle(page)
        shown, source = page.locator("body").inner_text(), page.content()
        for secret in secrets:
            assert secret not in shown and secret not in source, f"patient identifier {secret!r} on the page"
        assert "Zyxwv" not in source and "Qutsr" not in source  # the PatientName, in either part
        _screenshot(page, out_dir, "upload")


# ---- the Robustness lab's comparison fits the screen ----------------------------------------------------------
def test_robustness_lab_comparison_table_fits_1440_px(server, page, out_dir):
    """Issue 15: the comparison table was clipped on the right (its AVG and p columns out of sight)."""
    with _kept_on_failure(page, out_dir):
        page.goto(server, timeout=120_000)  # as a user arrives: the app, then the page in the sidebar
        page.get_by_text("Predicted").first.wait_for(timeout=SLOW)
        page.get_by_role("link", name="Robustness lab").click()
        page.get_by_text("Comparison table", exact=False).first.click()
        page.get_by_text("AUROC", exact=False).first.wait_for(timeout=SLOW)
        _idle(page)
        grids = page.locator('[data-testid="stDataFrame"]')
        assert grids.count() >= 1
        for i in range(grids.count()):  # a grid scrolls sideways only when its columns are wider than its box
            overflow = grids.nth(i).evaluate("el => { const s = el.querySelector('.dvn-scroller');"
                                             " return s ? s.scrollWidth - s.clientWidth : 0; }")
            assert overflow <= 1, f"table {i} on the Robustness lab overflows by {overflow} px"
        for table in page.locator('[data-testid="stTable"]').all():  # static tables wrap: within the main column
            assert table.evaluate("el => el.scrollWidth - el.clientWidth") <= 1
        _screenshot(page, out_dir, "robustness_lab")


# ---- 3. review: sign in, rate, reload, resume -----------------------------------------------------------
def _progress(page, timeout: float = SLOW) -> tuple[int, int]:
    text = page.get_by_text(re.compile(rf"{re.escape(REVIEWER)}: \d+ of \d+ rated")).first
    text.wait_for(timeout=timeout)
    done, total = re.search(r"(\d+) of (\d+) rated", text.inner_text()).groups()
    return int(done), int(total)


def _item_number(page) -> str:
    return page.get_by_label("Item", exact=True).input_value()


def test_review_sign_in_rate_reload_and_resume(server, page, out_dir):
    with _kept_on_failure(page, out_dir):
        page.goto(f"{server}/review", timeout=120_000)
        page.get_by_label("Your reviewer name").fill(REVIEWER, timeout=SLOW)
        page.get_by_label("Reviewer code (shared by the study)").fill(REVIEWER_CODE)
        page.get_by_label("Your PIN", exact=True).fill(PIN)
        page.get_by_label("Repeat PIN (first time here, or after a PIN reset)").fill(PIN)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text(re.compile(rf"Signed in as\s+{re.escape(REVIEWER)}")).first.wait_for(timeout=120_000)
        done, total = _progress(page)
        assert done == 0 and total > 1
        groups = page.get_by_role("radiogroup")
        groups.first.wait_for(timeout=SLOW)  # the first explanation is prepared on demand
        _idle(page)
        assert groups.count() == len(ANSWERS)
        first = _item_number(page)
        shown = page.locator("body").inner_text()
        save = page.get_by_role("button", name="Save rating")
        assert save.is_disabled()  # nothing preselected: nothing to save yet

        page.get_by_label("Comment (optional)").fill(COMMENT)
        for i, answer in enumerate(ANSWERS):
            groups.nth(i).get_by_text(re.compile(rf"^\s*{answer}(?!\d)")).click()  # "4", "5 · completely"
            page.wait_for_function("([i, a]) => { const g = document.querySelectorAll('[role=radiogroup]')[i];"
                                   " return g && [...g.querySelectorAll('input[type=radio]')].some("
                                   "r => r.checked && r.closest('label').innerText.trim().startsWith(a)); }",
                                   arg=[i, str(answer)], timeout=120_000)
        save.click(timeout=120_000)  # (waits until it is enabled: every question answered)
        page.get_by_text(re.compile(rf"{re.escape(REVIEWER)}: 1 of {total} rated")).first.wait_for(timeout=120_000)
        page.get_by_role("radiogroup").first.wait_for(timeout=SLOW)
        _idle(page)
        after_save = _item_number(page)
        assert after_save != first  # on to the next item
        case_ids = set(re.findall(r"\bCase (\S+)", shown))
        saved.update(reviewer=REVIEWER, case_ids=" ".join(case_ids))

        assert "reviewer_token=" in page.url  # what keeps the reviewer signed in
        page.reload(timeout=120_000)
        page.get_by_text(re.compile(rf"Signed in as\s+{re.escape(REVIEWER)}")).first.wait_for(timeout=120_000)
        assert _progress(page) == (1, total)
        page.get_by_role("radiogroup").first.wait_for(timeout=SLOW)
        _idle(page)
        assert _item_number(page) == after_save  # resumes at the next item, not the rated one
        assert page.get_by_label("Your reviewer name").count() == 0  # no sign-in form
        assert page.get_by_role("button", name="Save rating").is_disabled()  # the new item starts unanswered
        _screenshot(page, out_dir, "review")


# ---- 4. study admin: results and export -------------------------------------------------------------------
def test_admin_opens_results_and_exports_the_rating(server, page, out_dir):
    if not saved:
        pytest.skip("needs the rating saved by test_review_sign_in_rate_reload_and_resume (run the whole module)")
    with _kept_on_failure(page, out_dir):
        page.goto(f"{server}/review", timeout=120_000)
        page.get_by_role("tab", name=re.compile("Results")).click(timeout=SLOW)
        code = page.get_by_label("Study-admin code")
        code.fill("not-the-code")
        page.get_by_role("button", name="Open results").click()
        page.get_by_text("wrong study-admin code").wait_for(timeout=60_000)
        assert page.get_by_role("button", name=re.compile("Export ratings")).count() == 0
        page.get_by_label("Study-admin code").fill(ADMIN_CODE)
        page.get_by_role("button", name="Open results").click()
        export = page.get_by_role("button", name=re.compile("Export ratings"))
        export.wait_for(timeout=SLOW)
        _idle(page)
        with page.expect_download(timeout=120_000) as download:
            export.click()
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
        mine = [r for r in rows if r["reviewer"] == saved["reviewer"]]
        assert len(mine) == 1, rows
        row = mine[0]
        assert (row["relevance"], row["usefulness"], row["trust"]) == tuple(map(str, ANSWERS))
        assert row["comment"] == COMMENT
        assert row["case_id"] in saved["case_ids"].split()  # the case the reviewer was shown
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", row["saved_at"]), row["saved_at"]  # ISO-8601
        _screenshot(page, out_dir, "review_results")


# ---- 5. a model of your own: open it, a demo case, a modality off, explain, the report ------------------------
@pytest.fixture(scope="module")
def own_server(own_model_of, tmp_path_factory):
    """The app opened on a model of other shape than the shipped one (Derm7pt's layout: two images, clinical and
    dermoscopic, and a table of the patient), as `make run CHECKPOINT=DIR` does."""
    checkpoint, _ = own_model_of("derm")
    tmp = tmp_path_factory.mktemp("browser-own")
    yield from _serve({"RMD_CHECKPOINT": str(checkpoint), "RMD_REVIEWER_CODE": REVIEWER_CODE,
                       "RMD_REVIEW_DB": str(tmp / "review.sqlite3"), "RMD_REVIEW_WARM": "0"},
                      ROOT / "test-output" / "browser-own-server.log")


def test_own_model_demo_case_switch_explain_and_report(own_server, page, out_dir, own_model_of):
    from core.checkpoint import read_meta
    from core.paths import DEFAULT_CHECKPOINT

    checkpoint, _ = own_model_of("derm")
    classes = read_meta(checkpoint)["data_info"]["classes"]
    shipped = [c for c in read_meta(DEFAULT_CHECKPOINT)["data_info"]["classes"] if c not in classes]
    with _kept_on_failure(page, out_dir):
        page.goto(own_server, timeout=120_000)
        page.get_by_role("heading", name="Case explorer").first.wait_for(timeout=SLOW)
        page.get_by_text("Predicted").first.wait_for(timeout=SLOW)
        _idle(page)
        sidebar = page.locator('[data-testid="stSidebarContent"]').inner_text()
        assert "Model open" in sidebar and "derm7pt" in sidebar, sidebar
        assert any(_same_class(_predicted(page), c) for c in classes), _predicted(page)
        page.locator("label", has=page.get_by_role("switch", name="derm")).click()  # the dermoscopic image off
        page.get_by_text("Largest change").wait_for(timeout=120_000)
        _idle(page)
        page.get_by_role("button", name="Explain this prediction").click()
        page.get_by_text("Explained in").first.wait_for(timeout=SLOW)
        _idle(page)
        assert page.get_by_role("switch", name="Show heatmap").count() >= 1  # the clinical image's heatmap
        _, report = _download_report(page)
        assert "clinic" in report and "patient" in report and "data:image/png;base64," in report
        shown = page.locator("body").inner_text() + report
        assert not [c for c in shipped if c in shown or c.replace("_", " ") in shown.lower()]
        _screenshot(page, out_dir, "own_model")
