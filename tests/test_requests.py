"""Requests parsed once at the edge (`vslerp_app.requests`): each way in validates a request once,
and the engine trusts a request parsed against it while it still checks one a Python caller builds.

Counting wraps the real functions (they still run); nothing is stubbed.
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from pathlib import Path

import pytest

from pipelines import UnclipRunner
from vslerp_app import service
from vslerp_app.requests import AimAt, FrameRequest, RequestError, Sampling, SweepRequest

ROOT = Path(__file__).resolve().parents[1]
SOURCE, TARGET = ROOT / "examples" / "chelsea.jpg", ROOT / "examples" / "rocket.jpg"
FAST = {"steps": 2, "super_res_steps": 2, "preview_steps": 2}


@pytest.fixture(scope="module")
def engine(karlo_dir):
    from vslerp_app import load_pipeline

    return load_pipeline(karlo_dir)


def _count(monkeypatch, counts: Counter, owner, name: str, as_classmethod: bool = False) -> None:
    """Count the calls of ``owner.name``, which still does its work."""
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] += 1
        return real(*args[1:], **kwargs) if as_classmethod else real(*args, **kwargs)

    monkeypatch.setattr(owner, name, classmethod(counted) if as_classmethod else counted)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_preview_call_validates_its_request_once_and_hashes_each_input_once(engine, monkeypatch):
    """/preview over HTTP (gradio_client against the real server): one parse, one check of the
    sampling settings by the model family, one hash of each input file."""
    gradio_client = pytest.importorskip("gradio_client")
    import app as studio_app

    config = service.StudioConfig()
    demo = studio_app.build_demo(engine, config)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                **studio_app.launch_options(config))
    try:
        client = gradio_client.Client(demo.local_url, verbose=False)
        counts = Counter()
        _count(monkeypatch, counts, FrameRequest, "parse", as_classmethod=True)
        _count(monkeypatch, counts, UnclipRunner, "settings_problem")
        _count(monkeypatch, counts, service, "file_key")
        _, readouts = client.predict(source=gradio_client.handle_file(SOURCE),
                                     target=gradio_client.handle_file(TARGET), theta=0.5, alpha=1.0, seed=3,
                                     quality="full", api_name="/preview", **FAST)
        assert readouts["theta"] == 0.5 and readouts["cached"] is False
        assert counts == {"parse": 1, "settings_problem": 1, "file_key": 2}
    finally:
        demo.close()


def test_one_cli_render_validates_its_request_once(karlo_dir, tmp_path, monkeypatch):
    """`vslerp render` in process: one parse of the sweep, one check of its settings however many
    chunks it renders (three frames, one a chunk)."""
    from pipelines.fixtures import fixture_images
    from vslerp_app.cli import main

    for name, image in zip(("a.png", "b.png"), fixture_images(2, seed=5), strict=True):
        image.save(tmp_path / name)
    counts = Counter()
    _count(monkeypatch, counts, SweepRequest, "parse", as_classmethod=True)
    _count(monkeypatch, counts, UnclipRunner, "settings_problem")
    code = main(["render", "--model", str(karlo_dir), "--source", str(tmp_path / "a.png"), "--target",
                 str(tmp_path / "b.png"), "--theta", "0:1:3", "--alpha", "0.5", "--seed", "1", "--steps", "2",
                 "--super-res-steps", "2", "--max-batch", "1", "--out", str(tmp_path / "out")])
    assert code == 0 and len(list((tmp_path / "out" / "frames").glob("*.png"))) == 3
    assert counts == {"parse": 1, "settings_problem": 1}


def test_the_engine_trusts_a_parsed_request_and_checks_one_built_directly(engine, monkeypatch):
    counts = Counter()
    _count(monkeypatch, counts, UnclipRunner, "settings_problem")
    parsed = FrameRequest.parse(engine, source=str(SOURCE), target=str(TARGET), theta=0.5, alpha=1.0, seed=2,
                                quality="preview", **FAST)
    assert parsed.checked_by is engine and counts["settings_problem"] == 1
    frame = engine.render_frame(parsed)
    assert counts["settings_problem"] == 1 and (frame.theta, frame.alpha, frame.preview) == (0.5, 1.0, True)
    # A changed copy is another request: the engine checks it where it arrives.
    full = dataclasses.replace(parsed, sampling=dataclasses.replace(parsed.sampling, preview=False))
    assert full.checked_by is None and full == dataclasses.replace(full)
    engine.render_frame(full)
    assert counts["settings_problem"] == 2
    # Built directly by a Python caller, with a step count the family refuses: refused by name.
    bad = FrameRequest(str(SOURCE), str(TARGET), 0.5, 1.0, 2, Sampling(steps=1))
    with pytest.raises(ValueError, match="steps"):
        engine.render_frame(bad)


def test_parsed_requests_pickle_without_their_engine_for_zerogpu(engine):
    """ZeroGPU pickles a GPU function's arguments to its worker: a parsed request goes (its
    engine, which holds locks, stays behind) and the worker's engine checks it again."""
    import pickle

    studio = service.Studio(engine, service.StudioConfig())
    frame = studio.frame_request(source=str(SOURCE), target=str(TARGET), theta=0.5, alpha=1.0, seed=2,
                                 quality="preview", target_conformity=0.5, **FAST)
    sweep = studio.sequence_request(source=str(SOURCE), target=str(TARGET), sweep="theta", theta=0.5,
                                    alpha=1.0, theta_start=0.0, theta_stop=1.0, theta_frames=3,
                                    alpha_start=0.0, alpha_stop=1.0, alpha_frames=2, seed=2,
                                    quality="preview", fps=8, **FAST)
    path = studio.path_request(keyframes=[str(SOURCE), str(TARGET)], frames=3, loop=False, spacing="uniform",
                               ease=False, alpha="1", seed=2, quality="preview", fps=8, **FAST)
    for request in (frame, sweep, path):
        assert request.checked_by is engine
        copy = pickle.loads(pickle.dumps(request))
        assert copy == request and copy.checked_by is None


def test_a_batch_limit_of_0_is_refused_not_taken_as_the_default(engine):
    with pytest.raises(RequestError, match="max_batch must be a whole number >= 1, got 0"):
        FrameRequest.parse(engine, source=str(SOURCE), target=str(TARGET), theta=0.5, alpha=1.0, seed=2,
                           quality="preview", max_batch=0, **FAST)
    with pytest.raises(ValueError, match="max_batch must be a whole number >= 1, got 0"):
        engine.generate(str(SOURCE), str(TARGET), 0.5, 1.0, seed=2, preview=True, steps=2, max_batch=0)


def test_an_aimed_frame_carries_its_aim_and_reaches_the_wanted_conformity(engine):
    request = FrameRequest.parse(engine, source=str(SOURCE), target=str(TARGET), theta=0.4, alpha=0.0, seed=1,
                                 quality="preview", target_conformity="0.6", **FAST)
    assert request.alpha == AimAt(0.6)
    frame = engine.render_frame(request)
    assert frame.aim["wanted"] == 0.6 and frame.alpha == frame.aim["alpha"]
    if frame.aim["reachable"]:
        assert frame.conformity == pytest.approx(0.6, abs=1e-9)


@pytest.mark.parametrize("values, message", [
    ({"quality": "best"}, "quality must be one of full, preview, got 'best'"),
    ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
    ({"guidance_scale": "loud"}, "guidance_scale must be a number, got 'loud'"),
    ({"theta": ""}, "theta is empty: type a number."),
    ({"source": None}, "Add a source image first"),
    ({"target_conformity": 1.5}, "target_conformity must be between -1 and 1, got 1.5."),
])
def test_a_bad_frame_value_is_refused_by_name_before_any_model(values, message):
    frame = {"source": "a.png", "target": "b.png", "theta": 0.5, "alpha": 1.0, "seed": 0}
    with pytest.raises(RequestError, match=message.replace(".", r"\.").replace("(", r"\(")):
        FrameRequest.parse(None, **{**frame, **values})


def test_a_preview_is_the_same_request_with_preview_sampling():
    sampling = Sampling.parse("full", 25, 7, 3, 1.0, 4)
    preview = sampling.as_preview()
    assert preview == dataclasses.replace(sampling, preview=True)
    assert sampling.overrides() == {"steps": 25, "super_res_steps": 7, "guidance_scale": 1.0}
    assert preview.overrides() == {"steps": 3, "guidance_scale": 1.0}  # no super-resolution in a preview
    assert Sampling.from_options(True, 4).overrides() == {"steps": 4}
