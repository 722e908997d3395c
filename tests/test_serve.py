"""The app's shared model service (core/serve.py): one torch thread per worker, a priority queue with
positions, cached predictions, explanations reported in stages, clean shutdown; and the load bench."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch

from core.review import serialize
from core.serve import BACKGROUND, IDLE_S, INTERACTIVE, URGENT, ModelService, upload_key


@pytest.fixture
def service(predictor):
    s = ModelService(predictor, workers=1)
    yield s
    s.close()


def _block(service: ModelService) -> threading.Event:
    """Occupy the only worker until the returned event is set."""
    release, running = threading.Event(), threading.Event()

    def hold():
        running.set()
        release.wait(60)

    service.submit(hold, priority=INTERACTIVE)
    assert running.wait(30)
    return release


def test_workers_use_one_torch_thread_whatever_the_process_uses(predictor):
    before = torch.get_num_threads()
    s = ModelService(predictor, workers=2)
    try:
        assert [s.submit(torch.get_num_threads, priority=p).result(30) for p in (URGENT, INTERACTIVE, URGENT, INTERACTIVE)
                ] == [1] * 4
        assert torch.get_num_threads() == before  # the caller's own setting is left alone
    finally:
        s.close()


def test_queue_positions_priorities_and_the_prediction_lane(service):
    """With the only worker busy, a prediction still runs at once (its own lane), and the queue behind
    the worker is served by priority, each job knowing how many are ahead of it."""
    release = _block(service)
    order: list[str] = []
    late = service.submit(order.append, "background", priority=BACKGROUND)
    later = service.submit(order.append, "also background", priority=BACKGROUND)
    explain = service.submit(order.append, "explain", priority=INTERACTIVE)  # submitted after, runs before
    assert service.submit(order.append, "predict", priority=URGENT).result(30) is None
    assert order == ["predict"]
    assert (explain.ahead(), late.ahead(), later.ahead()) == (0, 1, 2)
    assert "Waiting for the model: 2 requests" in later.status()
    release.set()
    later.result(30)
    assert order == ["predict", "explain", "background", "also background"]
    assert later.ahead() == 0 and later.waited() > 0


def test_background_work_waits_for_an_idle_pool(predictor):
    """A long background job (preparing a review study) must not take a worker while people click: it
    starts only once nobody has asked the pool for anything for IDLE_S seconds."""
    s = ModelService(predictor, workers=2)
    try:
        people = s.submit(lambda: None, priority=INTERACTIVE)
        people.result(30)
        later = s.submit(lambda: None, priority=BACKGROUND)
        later.result(30)
        assert later.started - people.finished >= IDLE_S - 0.05
    finally:
        s.close()


def test_predictions_are_cached_per_case_and_availability(service, predictor, default_dataset):
    case = default_dataset.load(0)
    first = service.predict_job(case, "case-0").result(60)
    direct = predictor.predict(case)
    np.testing.assert_allclose(list(first.probabilities.values()), list(direct.probabilities.values()), atol=1e-6)
    again = service.predict_job(case, "case-0")
    assert again.done() and again.result() is first  # no model work for a display change
    without_labs = service.predict_job(case, "case-0", ["labs"]).result(60)
    assert without_labs is not first and "labs" in without_labs.synthesized


def test_explanation_arrives_in_stages_cheapest_first(service, predictor, default_dataset):
    case = default_dataset.load(0)
    job = service.explain_job(case, "case-0")
    exp = job.result(300)
    assert job.stages == ["contributions", "labs", "image", "note"]
    assert job.stage_times == sorted(job.stage_times) and job.stage_times[0] < job.finished
    assert job.partial is exp and exp.image and exp.note and exp.labs
    assert exp.target == predictor.predict(case).prediction
    again = service.explain_job(case, "case-0")  # another session, the same question: no model work
    assert again.done() and again.result() is exp and set(again.stages) == set(job.stages)
    assert service.explain_job(case, "case-0", ["labs"]).result(300) is not exp
    # kept on disk without pickle (issue 27), it comes back exactly: every field, type, dtype and bit
    buffer = io.BytesIO()
    serialize.write(exp, buffer)
    buffer.seek(0)
    back = serialize.read(buffer)
    (tree, arrays), (tree_back, arrays_back) = serialize.encode(exp), serialize.encode(back)
    assert type(back) is type(exp) and json.dumps(tree_back) == json.dumps(tree) and arrays and arrays_back.keys() == arrays.keys()
    assert all(arrays_back[k].dtype == a.dtype and arrays_back[k].tobytes() == a.tobytes() for k, a in arrays.items())


def test_an_uploaded_case_s_key_names_its_parts_unambiguously():
    """Issue 27: the key of an uploaded case (shared across sessions by the prediction and explanation caches)
    hashed the files' bytes run together, so a note ending where the labs began collided with another case."""
    import hashlib

    def before(parts):  # the old key: the bytes of every part, one after another
        h = hashlib.sha256()
        for _, _, data in parts:
            h.update(data)
        return h.hexdigest()

    one = [("note", "pasted note", b"no fever, cough"), ("labs", "lab file labs.csv", b"crp,12\n")]
    other = [("note", "pasted note", b"no fever, cough" + b"crp,12\n")]  # the labs moved into the note
    assert before(one) == before(other) and upload_key(one) != upload_key(other)
    as_file = [("note", "note file a.txt", b"no fever, cough"), one[1]]
    renamed = [one[0], ("labs", "lab file labs.tsv", b"crp,12\n")]  # read by another reader
    assert len({upload_key(p) for p in (one, other, as_file, renamed)}) == 4
    assert upload_key(list(one)) == upload_key(one) and upload_key(one).startswith("upload-")


def test_warm_up_explains_a_case_in_the_background(service, default_dataset):
    job = service.warm_up(default_dataset.load(0))
    assert job.priority == BACKGROUND and job.result(300) is None and job.finished > job.started


def test_errors_reach_the_waiting_page_and_close_cancels_waiting_jobs(predictor):
    s = ModelService(predictor, workers=1)
    with pytest.raises(ZeroDivisionError):
        s.submit(lambda: 1 / 0).result(30)
    release = _block(s)
    waiting = s.submit(lambda: "never")
    threading.Timer(0.5, release.set).start()
    s.close()
    assert waiting.future.cancelled()


def test_serve_bench_runs_real_sessions(monkeypatch, tmp_path, default_cohort):
    """One user, one round: every action of the bench happens in real page sessions and is timed."""
    import streamlit as st

    from tools.serve_bench import markdown, serve_bench

    monkeypatch.setenv("RMD_REVIEW_WARM", "0")
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    st.cache_resource.clear()
    res = serve_bench(users=1, rounds=1, review_items=1, think=(0.0, 0.1), first_think=0.0)
    assert not res["errors"], res["errors"]
    assert {"switch a modality", "explain", "review sign-in to first item", "review save to next item"} <= set(res["actions"])
    assert res["first_explain"]["first explain"] > 0 and res["first_explain"]["warm explain"] > 0
    assert "p95" in markdown(res)
