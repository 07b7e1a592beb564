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
import matplotlib.text
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
    """Spy on the engine's rendering of checked frames: the number of frames of each call."""
    calls: list[int] = []
    real = pipe.render_pairs

    def spy(source, target, pairs, *args, **kwargs):
        calls.append(len(pairs))
        return real(source, target, pairs, *args, **kwargs)

    monkeypatch.setattr(pipe, "render_pairs", spy)
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
    # The ZIP holds everything the render wrote, each file as it is on disk but the manifest,
    # whose copy inside is the one written just before the archive (it does not list the ZIP).
    archive = zipfile.ZipFile(out / "sequence.zip")
    assert sorted(archive.namelist()) == ["conformity.png", "contact_sheet.png", "frames/0000.png",
                                          "frames/0001.png", "frames/0002.png", "manifest.json",
                                          "sequence.gif", "sequence.mp4"]
    for name in archive.namelist():
        if name != "manifest.json":
            assert archive.read(name) == (out / name).read_bytes()
    inside = json.loads(archive.read("manifest.json"))
    assert "zip" not in inside["outputs"] and inside["frames"] == m["frames"]
    assert m["outputs"]["zip"] == {"file": "sequence.zip", "frames": 3, "files": [
        "manifest.json", "contact_sheet.png", "conformity.png", "sequence.gif", "sequence.mp4"]}
    # The inputs' own readouts, as the engine computes them (the plot marks them).
    for role, path in zip(("source", "target"), images, strict=True):
        assert m["inputs"][role]["readouts"] == pipe.stats.readouts(pipe.encode(path))
    # Every file has the usual mode (mkstemp's 0600 is not left behind).
    usual = 0o666 & ~files._UMASK
    assert {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()} == {
        p.name: usual for p in out.rglob("*") if p.is_file()}
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
    with pytest.raises(RenderError, match=r"other settings \(theta 0,1 -> 0,0.5\)"):
        render_sequence(pipe, *images, "0,0.5", 0.0, 4, out, **FAST)
    with pytest.raises(RenderError, match=r"\(grid false -> true; alpha 0 -> -1:3:16; frame count 2 -> 32\); "
                                          r"refusing to mix frames: use another --out folder, or delete"):
        render_sequence(pipe, *images, "0,1", "-1:3:16", 4, out, grid=True, **FAST)
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


# -- a full disk while writing the ZIP ---------------------------------------------------------
def test_a_full_disk_while_writing_the_zip_leaves_a_manifest_listing_only_whole_files(
        pipe, images, tmp_path, monkeypatch):
    out = tmp_path / "zip-full"
    real = files.atomic_write

    def full_at_zip(path, data):
        if Path(path).name == "sequence.zip":
            def half_then_full(tmp):  # the archive gets half written, then the disk is full
                Path(tmp).write_bytes(b"PK\x03\x04 half an archive")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, half_then_full)
        return real(path, data)

    monkeypatch.setattr(files, "atomic_write", full_at_zip)
    with pytest.raises(RenderError, match="sequence.zip: no space left on device"):
        render_sequence(pipe, *images, "0,1", 1.0, 5, out, gif=True, zip=True, **FAST)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["frames_done"] == 2
    assert "zip" not in manifest["outputs"] and not (out / "sequence.zip").exists()
    listed = [o["file"] for o in manifest["outputs"].values() if o.get("file")]
    assert sorted(listed) == ["conformity.png", "contact_sheet.png", "sequence.gif"]
    assert all((out / f).is_file() for f in listed + [e["file"] for e in manifest["frames"]])
    assert _no_partials(out)
    # With space again, the same command writes the archive and only then lists it.
    monkeypatch.setattr(files, "atomic_write", real)
    done = render_sequence(pipe, *images, "0,1", 1.0, 5, out, gif=True, zip=True, **FAST)
    assert done["outputs"]["zip"]["file"] == "sequence.zip" and done["runs"][-1]["frames_rendered"] == 0
    assert "sequence.gif" in zipfile.ZipFile(out / "sequence.zip").namelist()
    # A listed output deleted by hand is dropped from the manifest on the next run.
    (out / "sequence.gif").unlink()
    again = render_sequence(pipe, *images, "0,1", 1.0, 5, out, **FAST)
    assert "gif" not in again["outputs"]
    assert "gif" not in json.loads((out / "manifest.json").read_text())["outputs"]


def test_an_empty_out_dir_is_refused(pipe, images, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RenderError, match="output directory is empty"):
        render_sequence(pipe, *images, "0", 0.0, 1, "", **FAST)
    assert list(tmp_path.iterdir()) == []


# -- the conformity plot ---------------------------------------------------------------------
def _synthetic_grid(thetas, alphas, source=0.8, target=0.9):
    """Entries of a theta-major grid with readouts that vary with both theta and alpha."""
    entries = []
    for i, (t, a) in enumerate((t, a) for t in thetas for a in alphas):
        entries.append({"index": i, "theta": t, "alpha": a,
                        "conformity": source + (target - source) * t + 0.01 * a,
                        "frame_conformity": 0.85 + 0.02 * t - 0.005 * a,
                        "log_likelihood": -50 - 10 * t - a, "frame_log_likelihood": -60 - 5 * a})
    refs = {"source": {"conformity": source, "log_likelihood": -50.0},
            "target": {"conformity": target, "log_likelihood": -60.0}}
    return entries, refs


def _reference_lines(ax) -> dict[str, float]:
    """Horizontal lines labelled "source image (...)"/"target image (...)": role -> y."""
    found = {}
    for line in ax.get_lines():
        label = line.get_label()
        if label.startswith(("source image", "target image")):
            ys = set(np.asarray(line.get_ydata(), dtype=float).tolist())
            assert len(ys) == 1
            found[label.split()[0]] = ys.pop()
    return found


@pytest.mark.parametrize("n_alphas", [5, 16])
def test_grid_plot_is_a_heat_map_and_one_line_per_alpha_coloured_by_alpha(n_alphas):
    thetas = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    alphas = np.linspace(-1, 3, n_alphas).tolist()
    entries, refs = _synthetic_grid(thetas, alphas)
    fig = outputs.conformity_figure(entries, thetas, alphas, True, "grid", refs)
    heat = [ax for ax in fig.axes if ax.get_images()]
    assert len(heat) == 2  # embedding and frame conformity over (theta, alpha)
    for ax, key in zip(heat, ("conformity", "frame_conformity"), strict=True):
        z = ax.get_images()[0].get_array()
        assert z.shape == (len(thetas), len(alphas))  # rows theta, columns alpha
        expected = np.array([e[key] for e in entries]).reshape(len(thetas), len(alphas))
        np.testing.assert_allclose(np.asarray(z), expected)
        assert ax.get_xlabel() == "alpha"
    # One colour scale for both, extended to the inputs' values, which its colour bar marks.
    norms = {(im.norm.vmin, im.norm.vmax) for ax in heat for im in ax.get_images()}
    assert len(norms) == 1
    vmin, vmax = norms.pop()
    bar = next(ax for ax in fig.axes if ax.get_ylabel() == "conformity" and not ax.get_images()
               and any(t.get_text().startswith("source") for t in ax.texts))
    assert {t.get_text() for t in bar.texts} == {"source 0.8", "target 0.9"}
    assert vmin <= 0.8 and vmax >= 0.9
    # Lines against theta, one per alpha, each coloured by its alpha; no legend entry per alpha.
    lines_ax = [ax for ax in fig.axes if ax.get_xlabel() == "theta"]
    assert len(lines_ax) == 2  # conformity and log-likelihood
    for ax, key in zip(lines_ax, ("conformity", "log_likelihood"), strict=True):
        curves = [ln for ln in ax.get_lines()
                  if ln.get_linestyle() == "-" and not ln.get_label().startswith(("source", "target"))]
        assert len(curves) == n_alphas
        for line in curves:  # each curve runs over theta once: no line joins one row to the next
            assert list(line.get_xdata()) == thetas
        colours = [tuple(ln.get_color()) for ln in curves]
        assert len(set(colours)) == n_alphas
        assert len(ax.get_legend().get_texts()) == 4  # embedding, frame, source, target
        assert _reference_lines(ax) == {"source": refs["source"][key], "target": refs["target"][key]}
    assert not any(ax.get_xlabel().startswith("frame") for ax in fig.axes)


@pytest.mark.parametrize("thetas, alphas, xlabel", [
    ([0.0, 0.5, 1.0], [1.0], "theta (alpha 1)"),
    ([0.5], [-1.0, 0.0, 1.0, 2.0, 3.0], "alpha (theta 0.5)"),
    ([0.2, 0.5, 0.8], [0.3, -0.1, 0.7], "theta (alpha changes along the path)"),  # paired, or aimed
    ([0.2, 0.8, 0.5], [0.3, -0.1, 0.7], "frame (theta and alpha change together)"),
])
def test_sweep_plots_mark_the_source_and_target(thetas, alphas, xlabel):
    paired = len(thetas) == len(alphas) > 1
    pairs = list(zip(thetas, alphas, strict=True)) if paired else [(t, a) for t in thetas for a in alphas]
    entries = [{"index": i, "theta": t, "alpha": a, "conformity": 0.8 + 0.1 * t, "frame_conformity": 0.85,
                "log_likelihood": None, "frame_log_likelihood": None} for i, (t, a) in enumerate(pairs)]
    refs = {"source": {"conformity": 0.8, "log_likelihood": None},
            "target": {"conformity": 0.9, "log_likelihood": None}}
    fig = outputs.conformity_figure(entries, thetas, alphas, False, "sweep", refs)
    (ax,) = [ax for ax in fig.axes if ax.get_lines()]
    assert ax.get_xlabel() == xlabel
    assert _reference_lines(ax) == {"source": 0.8, "target": 0.9}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["embedding (Eq. 12)", "frame, re-encoded", "source image (0.8)", "target image (0.9)"]
    assert outputs.conformity_plot(entries, thetas, alphas, False, "sweep", refs)[:4] == b"\x89PNG"


def test_a_rendered_grid_plot_shows_its_manifest(pipe, images, tmp_path):
    m = render_sequence(pipe, *images, "0,1", "-1,0,1", 6, tmp_path / "g", grid=True, **FAST)
    fig = outputs.conformity_figure(m["frames"], m["settings"]["thetas"], m["settings"]["alphas"], True, "t",
                                    {r: d["readouts"] for r, d in m["inputs"].items()})
    heat = [ax for ax in fig.axes if ax.get_images()][0]
    np.testing.assert_allclose(np.asarray(heat.get_images()[0].get_array()),
                               np.array([e["conformity"] for e in m["frames"]]).reshape(2, 3))
    # theta = 0 is the source for every alpha, theta = 1 the target (Eq. 12's end points).
    ref = m["inputs"]["source"]["readouts"]["conformity"]
    assert all(e["conformity"] == pytest.approx(ref, abs=1e-5) for e in m["frames"][:3])
    # Drawn for the page: its width, every text at least PLOT_FONT_PT (the browser test checks the
    # size it is shown at); heat-map ticks at the rendered alphas and thetas.
    width = Image.open(tmp_path / "g" / "conformity.png").size[0]
    assert width == round(outputs.PLOT_WIDTH_IN * outputs.PLOT_DPI)
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip() and t.get_visible()]
    assert texts and min(t.get_fontsize() for t in texts) >= outputs.PLOT_FONT_PT
    assert [t.get_text() for t in heat.get_xticklabels()] == ["-1", "0", "1"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["0", "1"]


def test_heat_map_ticks_sit_on_rendered_alphas_rounded_to_tell_them_apart():
    """linspace(-1, 3, 16) (the authors' demo): six labelled cells, first and last included,
    each the value rendered there with the fewest decimals that keep the labels apart."""
    from matplotlib.figure import Figure

    from vslerp_app.specs import linspace

    alphas = linspace(-1, 3, 16)
    ax = Figure().add_subplot()
    outputs._value_ticks(ax, "x", alphas)
    ticks, labels = list(ax.get_xticks()), [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == [0, 3, 6, 9, 12, 15]
    assert labels == ["-1", "-0.2", "0.6", "1.4", "2.2", "3"]
    for i, label in zip(ticks, labels, strict=True):
        assert abs(float(label) - alphas[int(i)]) < 0.05
    outputs._value_ticks(ax, "y", [0.5, 0.501, 0.502])  # a narrow range: enough digits to differ
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.5", "0.501", "0.502"]


@pytest.mark.parametrize("count, columns", [(3, 3), (8, 8), (9, 3), (10, 5), (12, 6), (16, 8), (17, 6),
                                            (96, 8)])
def test_contact_sheet_columns_fit_the_count(count, columns):
    assert outputs.sheet_columns(count) == columns
    rows = -(-count // columns)
    assert rows * columns - count < columns / 2 or count <= 8  # no nearly empty last row


# -- jobs files ----------------------------------------------------------------------------
def test_jobs_file_is_checked_line_by_line_and_keeps_every_refusal(images, tmp_path):
    src, tgt = (str(p) for p in images)
    good = {"source": src, "target": tgt, "theta": "0:1:3", "alpha": 1, "seed": 2, "name": "a"}
    path = tmp_path / "jobs.jsonl"
    unnamed = {k: v for k, v in good.items() if k != "name"} | {"grid": True, "alpha": "-1,1"}
    (tmp_path / "text.png").write_text("not an image")
    lines = [
        json.dumps(good), "", "# comment", json.dumps(unnamed),  # lines 1 and 4: fine
        "{not json",
        json.dumps({**good, "name": "c", "colour": 1}),
        json.dumps({k: v for k, v in good.items() if k != "theta"} | {"name": "d"}),
        json.dumps({**good, "name": "e", "theta": "0:2:3"}),
        json.dumps({**good, "name": "A"}),  # the same folder as "a" on macOS and Windows
        json.dumps({**good, "name": "f", "source": "nope.png"}),
        json.dumps({**good, "name": "g", "target": "text.png"}),
        json.dumps({**good, "name": "h", "seed": -1}),
        json.dumps({**good, "name": "i", "grid": "yes"}),
        json.dumps({**good, "name": "j", "theta": "0,1", "alpha": "0,1,2"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    checked = read_jobs(path)
    assert [(j.index, j.name, j.grid, j.line) for j in checked.jobs] == [(0, "a", False, 1),
                                                                          (1, "0001", True, 4)]
    assert checked.jobs[1].source == src and checked.jobs[1].seed == 2
    refused = {r.line: r.reason for r in checked.refused}
    expected = {5: "not valid JSON", 6: "unknown key(s) colour", 7: "missing 'theta'", 8: "theta must be in",
                9: "already used by line 1", 10: "'nope.png' does not exist", 11: "is not an image",
                12: "seed", 13: "grid must be true or false", 14: "theta has 2 values and alpha 3"}
    assert sorted(refused) == sorted(expected)
    for line, words in expected.items():
        assert words in refused[line], (line, refused[line])
    assert [r.name for r in checked.refused][:2] == [None, None]  # no usable name before the name check


@pytest.mark.parametrize("name, words", [
    ("a\u0000b", "control character"), ("x" * 201, "201 characters long; at most 200"),
    ("jobs.json", "would overwrite the jobs summary"), ("JOBS.JSON", "would overwrite"),
    ("../x", "path separator"), ("a/b", "path separator"), ("a\\b", "path separator"),
    (".", "starts with '.'"), ("..", "starts with '.'"), (".hidden", "starts with '.'"), ("", "empty"),
    ("CON", "reserved device name"), ("nul.txt", "reserved device name"), ("a:b", "refused by Windows"),
    ("a ", "ends with"), ("a.", "ends with"),
    (7, "must be a string"), ("\u00e9" * 130, "bytes long in UTF-8"), ("\ud800", "not valid Unicode"),
])
def test_names_that_cannot_be_folders_are_refused_with_their_line(images, tmp_path, name, words):
    from vslerp_app.jobs import check_job_name

    assert check_job_name("cat-dog_01 (v2)") is None and check_job_name("ü" * 100) is None
    good = {"source": str(images[0]), "target": str(images[1]), "theta": 0}
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "name": name}) + "\n")
    checked = read_jobs(path)
    assert [j.line for j in checked.jobs] == [1]
    (refusal,) = checked.refused
    assert refusal.line == 2 and words in refusal.reason


def test_a_jobs_file_that_cannot_be_read_is_refused_whole(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'{"source": "caf\xe9.png"}\n')  # Latin-1, not UTF-8
    with pytest.raises(RenderError, match=r"jobs file .*jobs.jsonl is not UTF-8 text \(byte 0xe9 at"):
        read_jobs(path)
    path.write_text("\n# only a comment\n")
    with pytest.raises(RenderError, match="has no jobs"):
        read_jobs(path)
    with pytest.raises(RenderError, match="cannot read jobs file"):
        read_jobs(tmp_path / "missing.jsonl")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"source": "a", "target": "b", "theta": 0}).encode())
    assert read_jobs(path).refused[0].line == 1  # a BOM is fine (the image is what is missing)


# -- smoothness: every render measured (vslerp_app.smoothness) -------------------------------------
def _crimson_rows(png: Path) -> np.ndarray:
    """Rows of the plot holding the largest jump's crimson (outputs.JUMP_COLOR)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    hit = np.all(np.abs(rgb - np.array([0xDC, 0x14, 0x3C])) <= 8, axis=2)
    return np.nonzero(hit.any(axis=1))[0]


def test_every_render_is_measured_and_the_plot_has_the_step_strip(pipe, images, tmp_path, monkeypatch):
    """The manifest's smoothness is the frames' re-encoded embeddings measured: the same numbers
    when recomputed from the PNGs on disk (a resumed render reads earlier frames back); the plot
    grows a strip under the readouts with the largest jump in crimson at its bottom."""
    import torch

    from vslerp_app import smoothness

    out = tmp_path / "sweep"
    m = render_sequence(pipe, *images, "0:1:6", 1.0, seed=4, out_dir=out, preview=True, steps=2)
    measured = m["smoothness"]["model"]
    frames = [Image.open(out / e["file"]).convert("RGB") for e in m["frames"]]
    again = torch.stack(pipe.encoder.encode_batched(frames, 8))
    expected = smoothness.describe(again, sources=again[0], targets=again[-1], space=pipe.encoder.name)
    assert measured["steps"] == pytest.approx(expected["steps"], rel=1e-4, abs=1e-9)
    assert measured["smoothness"] == pytest.approx(expected["smoothness"], abs=1e-4)
    assert measured["directness"] == expected["directness"] and measured["space"] == pipe.encoder.name
    assert "reference" not in m["smoothness"] and "lpips" not in m["smoothness"]  # neither configured here
    rows = _crimson_rows(out / "conformity.png")
    height = Image.open(out / "conformity.png").height
    assert len(rows) and rows.min() > height - outputs.STRIP_INCHES * 100  # in the strip, at the bottom
    # a stopped render resumed: earlier frames read back from disk give the same numbers
    for name in ("frames/0004.png", "frames/0005.png"):
        (out / name).unlink()
    kept_frames = _mtimes(out)
    resumed = render_sequence(pipe, *images, "0:1:6", 1.0, seed=4, out_dir=out, preview=True, steps=2)
    assert resumed["runs"][-1]["frames_rendered"] == 2 and all(
        _mtimes(out)[name] == t for name, t in kept_frames.items())
    # (frames 4 and 5 rendered alone may differ from their batch by a uint8 level on a few pixels)
    assert resumed["smoothness"]["model"]["steps"] == pytest.approx(measured["steps"], rel=1e-4, abs=1e-7)
    # nothing rendered: kept as it was
    monkeypatch.setattr(smoothness, "describe_sequence", None)
    kept = render_sequence(pipe, *images, "0:1:6", 1.0, seed=4, out_dir=out, preview=True, steps=2)
    assert kept["smoothness"] == resumed["smoothness"]


def test_a_grid_is_measured_by_rows_and_columns(pipe, images, tmp_path):
    m = render_sequence(pipe, *images, "0:1:3", "-1,0.5,2,3", seed=4, out_dir=tmp_path / "g", grid=True,
                        preview=True, steps=2)
    g = m["smoothness"]["model"]
    assert [len(r["steps"]) for r in g["rows"]] == [3, 3, 3]  # one theta each, alpha changing
    assert [len(c["steps"]) for c in g["columns"]] == [2] * 4  # one alpha each, theta changing
    assert len(_crimson_rows(tmp_path / "g" / "conformity.png"))
    from vslerp_app.smoothness import summary_line

    assert summary_line(g).startswith("Grid rows (one theta each): smoothness ")


def test_a_streamed_render_reports_every_step_and_a_stop_ends_its_batch_at_the_next(pipe, images, tmp_path):
    """The studio's sequence (the page's Render): a progress line after every denoising step and
    batch; once Stop is pressed, the batch in progress ends at its next step, nothing is kept."""
    import threading

    from vslerp_app.service import Studio

    studio = Studio(pipe)
    studio.work_root = tmp_path / "work"
    heard, stop = [], threading.Event()

    def progress(fraction: float, text: str) -> None:
        heard.append((fraction, text))
        if text.startswith("batch 2 of 3, step 3 of"):
            stop.set()  # pressed while the second batch denoises

    src, tgt = (str(p) for p in images)
    request = studio.sequence_request(
        source=src, target=tgt, sweep="theta", theta=0.5, alpha=1.0, theta_start=0.0, theta_stop=1.0,
        theta_frames=6, alpha_start=-1.0, alpha_stop=2.0, alpha_frames=3, seed=0, quality="full", steps=5,
        super_res_steps=2, preview_steps=2, guidance_scale=None, max_batch=2, fps=4.0)
    updates = list(studio.sequence({}, request, progress=progress, stop=stop))
    assert [u.done for u in updates] == [0, 2] and updates[-1].files is None  # the first batch only
    texts = [t for _, t in heard]
    assert texts[0].startswith("batch 1 of 3, step 1 of 7 · 0 of 6 frames done · ")
    assert [t.split(" · ")[0] for t in texts[:7]] == [f"batch 1 of 3, step {k} of 7" for k in range(1, 8)]
    assert texts[-1].startswith("batch 2 of 3, step 3 of 7 · 2 of 6 frames done")  # step 4 never ran
    fractions = [f for f, _ in heard]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx((2 + 2 * 3 / 7) / 6)
    assert not any(studio.work_root.iterdir())
