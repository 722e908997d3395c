"""What background work costs the people using the app (issue 29 item 10), measured as a server meets it:

    python -m tools.background_load idle      # CPU of an idle server after the review page was opened
    python -m tools.background_load quick     # an explanation alone, then beside a running quick evaluation

`idle`: a real review-page session (Streamlit's AppTest, the page script itself) signs in, then the process's
CPU time is read over 5 s windows while nobody does anything; the process should go quiet once the next items
are prepared. `quick`: a warm explanation of a demo case through the app's worker pool (core/serve.py), three
times alone, then three times while the Robustness lab's quick evaluation runs in its own process (nice 10, one
torch thread); prints wall seconds of each. Numbers go to BENCHMARKS.md with the machine named.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def idle(windows: int = 6) -> None:
    from streamlit.testing.v1 import AppTest

    from core.paths import ROOT

    os.environ.setdefault("RMD_REVIEWER_CODE", "demo")
    os.environ["RMD_REVIEW_DB"] = str(Path(tempfile.mkdtemp()) / "review.sqlite3")
    at = AppTest.from_file(str(ROOT / "pages" / "review.py"), default_timeout=600).run()
    at.text_input(key="reviewer_name").input("idle-bench")
    at.text_input(key="reviewer_code").input(os.environ["RMD_REVIEWER_CODE"])
    at.text_input(key="reviewer_pin").input("1234")
    at.text_input(key="reviewer_pin_again").input("1234")
    at = next(b for b in at.button if b.label == "Sign in").click().run()
    assert not at.exception, at.exception
    opened = time.perf_counter()
    for w in range(windows):
        c0, t0 = time.process_time(), time.perf_counter()
        time.sleep(5)
        busy = 100 * (time.process_time() - c0) / (time.perf_counter() - t0)
        print(f"{t0 - opened:4.0f}–{time.perf_counter() - opened:3.0f} s after the page opened: CPU {busy:3.0f} % of "
              f"one core; threads {sorted(t.name for t in threading.enumerate() if t.name != 'MainThread')}", flush=True)


def quick(repeats: int = 3) -> None:
    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.demo import demo_cases
    from core.evaluation import evaluate
    from core.inference import Predictor
    from core.paths import default_cohort_dir
    from core.serve import ModelService

    ds = Dataset.open(ensure_cohort(default_cohort_dir(), progress=False))
    demo = demo_cases(ds)[0]
    case = ds.load(demo.row)
    service = ModelService(Predictor.load())
    service.explain_job(case, "bench-warm", (), "integrated_gradients").result()  # warm: imports, kernels

    def timed(label: str) -> None:
        for i in range(repeats):
            t0 = time.perf_counter()
            service.explain_job(case, f"bench-{label}-{i}", (), "integrated_gradients").result()
            print(f"explanation {label}: {time.perf_counter() - t0:.1f} s", flush=True)

    timed("alone")
    job, _ = evaluate.start_quick(["early_zero", "dropout_0.5", "masked_attention"])
    time.sleep(60)  # past its start-up and encoding, into training
    try:
        timed("beside a quick evaluation")
    finally:
        print(f"quick evaluation still running: {job.running}", flush=True)
        job.stop()
    service.close()


if __name__ == "__main__":
    {"idle": idle, "quick": quick}[sys.argv[1] if len(sys.argv) > 1 else "idle"]()
