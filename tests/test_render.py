"""`vslerp_app.render` from Python on the tiny Karlo fixture: SPECs, outputs, manifest, resume.

The command line (subprocesses: errors, a killed run, jobs over two processes) is in
tests/test_cli_render.py.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image, ImageSequence

from pipelines.fixtures import fixture_images
from vslerp_app import files, load_pipeline, outputs
from vslerp_app.files import atomic_write
from vslerp_app.jobs import read_jobs
from vslerp_app.render import RenderError, iter_render_sequence, render_sequence
from vslerp_app.specs import SpecError, as_values, check_range, combine, parse_spec

FAST = dict(steps=2, super_res_steps=2)


@pytest.fixture(scope="session")
def pipe(karlo_dir):
    return load_pipeline(karlo_dir, device="cpu")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("render-inputs")
    paths = []
    for name, img in zip(("source.png", "target.png"), fixture_images(2, seed=11), strict=True):
        img.save(root / name)
        paths.append(root / name)
    return paths


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "frames").glob("*.png"))}


def _count_generated(pipe, monkeypatch) -> list[int]:
    """Spy on pipe.generate: the number of frames of each call."""
    calls: list[int] = []
    real = pipe.generate

    def spy(source, target, thetas, *args, **kwargs):
        calls.append(len(thetas))
        return real(source, target, thetas, *args, **kwargs)

    monkeypatch.setattr(pipe, "generate", spy)
    return calls


def _pixels(out: Path, manifest: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(out / e["file"])).astype(np.int16) for e in manifest["frames"]]


def _same_pixels(out: Path, manifest: dict, expected: list[np.ndarray]) -> None:
    """A frame re-rendered in another chunk equals the first one up to float noise.

    A frame alone matches its row in a batch to ~1e-6 almost everywhere; on the random-weight
    fixture a single pixel may differ by ~3e-3 (a value on the edge of a clamp in
    super-resolution), so allow one uint8 step everywhere and a few levels on 3 pixels.
    """
    got = _pixels(out, manifest)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        diff = np.abs(a - b)
        assert (diff > 1).sum() <= 3 and diff.max() <= 8


def _no_partials(out: Path) -> bool:
    return not [p for p in out.rglob("*") if ".partial" in p.name]


# -- SPECs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, values", [
    ("0.5", [0.5]),
    (" 1 ", [1.0]),
    ("0,0.25,1", [0.0, 0.25, 1.0]),
    ("0:1:5", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("-1:3:3", [-1.0, 1.0, 3.0]),
    ("2:2:1", [2.0]),
    ("1:0:3", [1.0, 0.5, 0.0]),
    (0.3, [0.3]),
])
def test_parse_spec(spec, values):
    assert parse_spec(spec, "theta") == pytest.approx(values)


def test_linspace_spec_hits_its_endpoints_exactly():
    values = parse_spec("0:1:7")
    assert values[0] == 0.0 and values[-1] == 1.0 and len(values) == 7


@pytest.mark.parametrize("spec, words", [
    ("", "empty"), ("abc", "'abc' is not a number"), ("0:1", "start:stop:count"),
    ("0:1:x", "count 'x'"), ("0:1:0", "count must be"), ("0,,1", "empty item"),
    ("nan", "finite"), ("0:1:2.5", "whole number"),
])
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(SpecError, match="theta") as info:
        parse_spec(spec, "theta")
    assert words in str(info.value)


def test_values_from_lists_and_arrays():
    assert as_values([0, 0.5, 1], "theta") == [0.0, 0.5, 1.0]
    assert as_values(np.array([0.25, 0.75]), "theta") == [0.25, 0.75]
    with pytest.raises(SpecError, match="is not a number"):
        as_values([0, "x"], "theta")
    with pytest.raises(SpecError, match="empty"):
        as_values([], "alpha")


def test_sweep_pairs_broadcasts_and_refuses_unequal_lengths():
    assert combine([0, 0.5, 1], [2]) == [(0, 2), (0.5, 2), (1, 2)]
    assert combine([0.3], [-1, 1]) == [(0.3, -1), (0.3, 1)]
    assert combine([0, 1], [5, 6]) == [(0, 5), (1, 6)]
    with pytest.raises(SpecError, match="theta has 3 values and alpha 2"):
        combine([0, 0.5, 1], [1, 2])


def test_grid_is_theta_major():
    assert combine([0, 1], [-1, 0, 1], grid=True) == [(0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]


def test_range_checks():
    check_range([0, 1], [-10, 10])
    with pytest.raises(SpecError, match=r"theta must be in \[0, 1\], got 1.5"):
        check_range([0, 1.5], [0])
    with pytest.raises(SpecError, match="alpha must be in"):
        check_range([0], [11])


# -- atomic files --------------------------------------------------------------------------
def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.json"
    atomic_write(path, b"old")

    def broken(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert (path.stat().st_mode & 0o777) == 0o666 & ~files._UMASK


# -- a full render -------------------------------------------------------------------------
def test_frames_manifest_sheet_plot_gif_mp4_zip(pipe, images, tmp_path):
    out = tmp_path / "run"
    m = render_sequence(pipe, *images, "0:1:3", "1.5", 7, out, gif=True, mp4=True, zip=True,
                        fps=5, max_batch=2, **FAST)
    assert m["status"] == "complete" and m["frame_count"] == 3 == len(m["frames"])
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["fingerprint"] == m["fingerprint"] and on_disk["frames"] == m["frames"]
    for i, (entry, theta) in enumerate(zip(m["frames"], [0.0, 0.5, 1.0], strict=True)):
        assert entry["file"] == f"frames/{i:04d}.png"
        assert (entry["theta"], entry["alpha"], entry["seed"]) == (theta, 1.5, 7)
        for key in ("conformity", "frame_conformity", "log_likelihood", "frame_log_likelihood"):
            assert np.isfinite(entry[key])
        assert entry["conformity_kind"] == "exact"
        data = (out / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert Image.open(io.BytesIO(data)).size == (64, 64)
    # Per run: model, pipeline with stats provenance, settings, versions, timings.
    assert m["pipeline"]["stats"]["provenance"]["dataset"]
    s = m["settings"]
    assert (s["steps"], s["super_res_steps"], s["seed"]) == (2, 2, 7)
    assert (s["thetas"], s["alphas"]) == ([0, 0.5, 1], [1.5])
    assert s["source"] == m["inputs"]["source"]["sha256"] and s["stats"] == m["pipeline"]["stats"]["checksum"]
    assert m["versions"]["torch"] and m["versions"]["diffusers"]
    assert m["timings"]["render_seconds"] > 0 and m["runs"][0]["frames_rendered"] == 3
    # Contact sheet and plot are images; GIF and MP4 hold every frame.
    assert Image.open(out / "contact_sheet.png").size[0] >= 3 * 64
    assert Image.open(out / "conformity.png").format == "PNG"
    gif = Image.open(out / "sequence.gif")
    assert sum(1 for _ in ImageSequence.Iterator(gif)) == 3
    assert gif.info["duration"] == 200
    reader = imageio_ffmpeg.read_frames(str(out / "sequence.mp4"))
    meta = next(reader)
    assert meta["size"] == (64, 64) and len(list(reader)) == 3
    names = zipfile.ZipFile(out / "sequence.zip").namelist()
    assert sorted(names) == ["frames/0000.png", "frames/0001.png", "frames/0002.png", "manifest.json"]
    assert _no_partials(out)


def test_gif_keeps_identical_neighbours_and_grid_order(pipe, images, tmp_path):
    # theta = 0 is the source for every alpha: identical frames, which Pillow's GIF writer
    # would merge into one. The grid runs theta major.
    out = tmp_path / "grid"
    m = render_sequence(pipe, *images, "0,1", "-1,1", 3, out, grid=True, gif=True, **FAST)
    assert [(e["theta"], e["alpha"]) for e in m["frames"]] == [(0, -1), (0, 1), (1, -1), (1, 1)]
    assert m["shape"] == [2, 2]
    assert np.array_equal(np.asarray(Image.open(out / "frames/0000.png")),
                          np.asarray(Image.open(out / "frames/0001.png")))
    assert sum(1 for _ in ImageSequence.Iterator(Image.open(out / "sequence.gif"))) == 4


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (31, 33, 3), dtype=np.uint8) for _ in range(3)]
    padded = outputs._even([Image.fromarray(f) for f in frames])
    assert padded[0].shape == (32, 34, 3) and np.array_equal(padded[0][:31, :33], frames[0])
    path = tmp_path / "odd.mp4"
    atomic_write(path, lambda tmp: outputs.write_video(tmp, padded, 4.0, "mp4"))
    reader = imageio_ffmpeg.read_frames(str(path))
    assert next(reader)["size"] == (34, 32) and len(list(reader)) == 3


def test_a_manifest_readout_equals_generate_directly(pipe, images, tmp_path):
    m = render_sequence(pipe, *images, "0.2,0.7", "2", 11, tmp_path / "r", max_batch=2, **FAST)
    frames = pipe.generate(*images, [0.2, 0.7], 2.0, seed=11, max_batch=2, **FAST)
    for entry, frame in zip(m["frames"], frames, strict=True):
        readouts = frame.readouts()
        assert entry["conformity"] == readouts["conformity"]
        assert entry["frame_conformity"] == readouts["frame_conformity"]
        assert entry["frame_log_likelihood"] == readouts["frame_log_likelihood"]
        assert np.array_equal(np.asarray(Image.open(tmp_path / "r" / entry["file"])), np.asarray(frame.image))


def test_pil_inputs_work_too(pipe, tmp_path):
    source, target = fixture_images(2, seed=11)
    m = render_sequence(pipe, source, target, 0.5, 0.0, 1, tmp_path / "p", contact=False, plot=False,
                        **FAST)
    assert m["frames_done"] == 1 and m["inputs"]["source"]["kind"] == "image"
    assert not (tmp_path / "p" / "contact_sheet.png").exists()


# -- resume -------------------------------------------------------------------------------
def test_rerun_skips_finished_frames_without_rewriting_them(pipe, images, tmp_path, monkeypatch):
    out = tmp_path / "resume"
    first = render_sequence(pipe, *images, "0:1:3", 0.5, 2, out, gif=True, **FAST)
    first_pixels = _pixels(out, first)
    before = _mtimes(out)
    gif_mtime = (out / "sequence.gif").stat().st_mtime_ns
    calls = _count_generated(pipe, monkeypatch)
    second = render_sequence(pipe, *images, "0:1:3", 0.5, 2, out, gif=True, **FAST)
    assert calls == [] and _mtimes(out) == before
    assert (out / "sequence.gif").stat().st_mtime_ns == gif_mtime
    assert second["frames"] == first["frames"] and second["fingerprint"] == first["fingerprint"]
    assert [r["frames_rendered"] for r in second["runs"]] == [3, 0]
    assert second["runs"][1]["frames_reused"] == 3
    # A damaged and a deleted frame are rendered again, and only they.
    (out / "frames/0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (out / "frames/0002.png").unlink()
    third = render_sequence(pipe, *images, "0:1:3", 0.5, 2, out, gif=True, **FAST)
    assert calls == [2]
    assert _mtimes(out)["0000.png"] == before["0000.png"]
    _same_pixels(out, third, first_pixels)
    assert (out / "sequence.gif").stat().st_mtime_ns != gif_mtime


def test_leftovers_of_a_killed_write_are_cleaned_and_the_run_completed(pipe, images, tmp_path):
    out = tmp_path / "killed"
    full = render_sequence(pipe, *images, "0,1", 0.0, 4, out, **FAST)
    full_pixels = _pixels(out, full)
    # As if killed mid-write of frame 1: its temporary file is half written, it is not in
    # the manifest, and the final file never appeared.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["frames"] = manifest["frames"][:1]
    manifest["status"] = "partial"
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "frames/0001.png").unlink()
    (out / "frames/.0001.k3j2.partial.png").write_bytes(b"\x89PNG half")
    done = render_sequence(pipe, *images, "0,1", 0.0, 4, out, **FAST)
    assert done["status"] == "complete" and _no_partials(out)
    _same_pixels(out, done, full_pixels)


def test_changed_settings_are_refused(pipe, images, tmp_path):
    out = tmp_path / "changed"
    render_sequence(pipe, *images, "0,1", 0.0, 4, out, **FAST)
    before = _mtimes(out)
    with pytest.raises(RenderError, match=r"other settings \(seed 4 -> 5\)"):
        render_sequence(pipe, *images, "0,1", 0.0, 5, out, **FAST)
    with pytest.raises(RenderError, match=r"super_res_steps 2 -> 3"):
        render_sequence(pipe, *images, "0,1", 0.0, 4, out, steps=2, super_res_steps=3)
    with pytest.raises(RenderError, match="target"):
        render_sequence(pipe, images[0], images[0], "0,1", 0.0, 4, out, **FAST)
    with pytest.raises(RenderError, match="frames"):
        render_sequence(pipe, *images, "0,0.5", 0.0, 4, out, **FAST)
    assert _mtimes(out) == before


def test_a_full_disk_stops_with_one_line_and_keeps_finished_frames(pipe, images, tmp_path, monkeypatch):
    out = tmp_path / "full"
    real, count = files.atomic_write, []

    def filling_up(path, data):
        count.append(path)
        if len(count) > 4:  # manifest, frames 0 and 1, manifest; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(files, "atomic_write", filling_up)
    with pytest.raises(RenderError) as info:
        render_sequence(pipe, *images, "0:1:4", 0.0, 9, out, max_batch=2, **FAST)
    message = str(info.value)
    assert "\n" not in message and "no space left on device" in message and "0002.png" in message
    assert sorted(_mtimes(out)) == ["0000.png", "0001.png"] and _no_partials(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "partial" and [e["index"] for e in manifest["frames"]] == [0, 1]
    monkeypatch.setattr(files, "atomic_write", real)
    done = render_sequence(pipe, *images, "0:1:4", 0.0, 9, out, max_batch=2, **FAST)
    assert done["status"] == "complete" and done["frames_done"] == 4
    for e in done["frames"]:
        Image.open(out / e["file"]).load()


def test_a_render_stopped_after_its_first_chunk_keeps_those_frames_and_resumes(pipe, images, tmp_path):
    """Closing iter_render_sequence (a Stop button) stops after the chunk in progress: what is on
    disk is valid, the manifest says partial, and running again renders only the rest."""
    out = tmp_path / "stopped"
    events = iter_render_sequence(pipe, *images, "0:1:5", 0.0, 3, out, max_batch=2, **FAST)
    first = next(events)
    assert (first.done, first.total, first.manifest) == (2, 5, None)
    assert [e["index"] for e in first.frames] == [0, 1]
    events.close()
    assert sorted(_mtimes(out)) == ["0000.png", "0001.png"] and _no_partials(out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "partial"
    seen = [(e.done, e.manifest is not None) for e in
            iter_render_sequence(pipe, *images, "0:1:5", 0.0, 3, out, max_batch=2, **FAST)]
    assert seen == [(4, False), (5, False), (5, True)]


# -- jobs files ----------------------------------------------------------------------------
def test_jobs_file_is_checked_line_by_line(images, tmp_path):
    src, tgt = (str(p) for p in images)
    good = {"source": src, "target": tgt, "theta": "0:1:3", "alpha": 1, "seed": 2, "name": "a"}
    path = tmp_path / "jobs.jsonl"
    unnamed = {k: v for k, v in good.items() if k != "name"} | {"grid": True}
    path.write_text(json.dumps(good) + "\n\n# comment\n" + json.dumps(unnamed))
    jobs = read_jobs(path)
    assert [(j.index, j.name, j.grid, j.line) for j in jobs] == [(0, "a", False, 1), (1, "0001", True, 4)]
    cases = [
        ("{not json", ":1: not valid JSON"),
        (json.dumps({**good, "colour": 1}), "unknown key"),
        (json.dumps({k: v for k, v in good.items() if k != "theta"}), "missing 'theta'"),
        (json.dumps({**good, "theta": "0:2:3"}), "theta must be in"),
        (json.dumps({**good, "name": "../x"}), "plain folder name"),
        (json.dumps(good) + "\n" + json.dumps(good), "already used"),
        (json.dumps({**good, "source": "nope.png"}), "does not exist"),
        ("", "has no jobs"),
    ]
    for text, words in cases:
        path.write_text(text)
        with pytest.raises(RenderError, match=words):
            read_jobs(path)
