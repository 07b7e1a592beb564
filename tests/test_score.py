"""`vslerp score`: every image's conformity and likelihood on the stats population's scale.

On the tiny Karlo fixture: the scores are the engine's readouts of the same files,
percentiles lie in [0, 100] and grow with the value, the two-folder report (means, medians,
KS and Wasserstein-1 against brute force), resuming without re-encoding, unreadable files,
stats without a population, and the command line (model and open_clip reference space).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.fixtures import fixture_images
from vslerp_app import load_pipeline
from vslerp_app.score import CACHE_NAME, extremes, ks_statistic, score_folders, wasserstein_1
from vslerp_app.stats import ModalityStats, StatsError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipe(karlo_dir):
    return load_pipeline(karlo_dir)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders: smooth fields and gradients (one nested, one broken file) and blobs."""
    root = tmp_path_factory.mktemp("score-images")
    fields, blobs = root / "fields", root / "blobs"
    (fields / "nested").mkdir(parents=True)
    blobs.mkdir()
    for i, img in enumerate(fixture_images(60, seed=21, size=48)):
        if i % 3 == 2:
            img.save(blobs / f"b{i:03d}.png")
        else:
            img.save((fields / "nested" if i % 5 == 0 else fields) / f"f{i:03d}.{'jpg' if i % 2 else 'png'}")
    (fields / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (fields / "notes.txt").write_text("not an image suffix: ignored")
    return fields, blobs


class CountingEncoder:
    """The fixture's encoder, passed through, counting the images it encodes."""

    def __init__(self, encoder):
        self.encoder, self.count = encoder, 0
        self.name, self.dim = encoder.name, encoder.dim

    def encode(self, images):
        self.count += len(images)
        return self.encoder.encode(images)


def test_scores_are_the_engines_readouts_with_monotone_percentiles(pipe, folders, tmp_path):
    # One image per batch: the same computation as the engine's, so the same numbers exactly.
    report = score_folders(pipe.encoder, pipe.stats, folders, tmp_path / "one", batch_size=1)
    assert len(report.rows) == 40 + 20 and report.encoded == 60 and report.reused == 0
    keys = ("conformity", "conformity_percentile", "log_likelihood", "log_likelihood_percentile")
    for row in report.rows:
        engine = pipe.stats.readouts(pipe.encode(row["path"]))  # the engine's readout of an input image
        assert {k: row[k] for k in keys} == {k: engine[k] for k in keys}
    for key in ("conformity", "log_likelihood"):
        ordered = sorted(report.rows, key=lambda r: r[key])
        pct = [r[f"{key}_percentile"] for r in ordered]
        assert all(0 <= p <= 100 for p in pct) and pct == sorted(pct)
        assert pct[0] < pct[-1]  # the fixture's images spread over the population's scale
    # Batched: the encoder's float32 output depends on the batch size at the 1e-7 level, which
    # the fixture's ill-conditioned whitening (condition number ~1e10) amplifies in the likelihood.
    batched = score_folders(pipe.encoder, pipe.stats, folders, tmp_path / "batched", batch_size=7)
    for row, one in zip(batched.rows, report.rows, strict=True):
        assert row["path"] == one["path"]
        assert row["conformity"] == pytest.approx(one["conformity"], abs=1e-6)
        assert row["log_likelihood"] == pytest.approx(one["log_likelihood"], rel=1e-4)


def test_files_sorted_rows_folder_summaries_and_skipped(pipe, folders, tmp_path):
    out = tmp_path / "out"
    report = score_folders(pipe.encoder, pipe.stats, [str(f) for f in folders], out)
    data = json.loads((out / "scores.json").read_text())
    rows = data["rows"]
    assert [(r["folder"], r["file"]) for r in rows] == sorted((r["folder"], r["file"]) for r in rows)
    assert {r["file"] for r in rows if r["folder"] == str(folders[0])} >= {"nested/f000.png", "f001.jpg"}
    with open(out / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["file", "folder", "conformity", "conformity_percentile", "log_likelihood",
                              "log_likelihood_percentile"]
    assert [(t["file"], t["folder"]) for t in table] == [(r["file"], r["folder"]) for r in rows]
    assert all(float(t["conformity"]) == r["conformity"] for t, r in zip(table, rows, strict=True))
    summary = {s["folder"]: s for s in data["folders"]}
    for folder in map(str, folders):
        c = np.array([r["conformity"] for r in rows if r["folder"] == folder])
        assert summary[folder]["conformity"]["mean"] == pytest.approx(c.mean(), rel=1e-12)
        assert summary[folder]["conformity"]["median"] == pytest.approx(np.median(c), rel=1e-12)
    assert summary[str(folders[0])]["skipped"] == 1 and summary[str(folders[1])]["skipped"] == 0
    assert [s["file"] for s in data["skipped"]] == [str(folders[0] / "broken.png")]
    assert "truncated or corrupt" in data["skipped"][0]["reason"]
    assert data["stats"]["conformity_label"] == "exact conformity (Eq. 10)" and data["stats"]["percentiles"]
    for name in ("report.png", "fields.conformal.png", "blobs.conformal.png"):
        with Image.open(out / name) as im:
            im.load()
            assert im.width > 300 and im.height > 200, name
    assert report.files["sheets"] == {str(folders[0]): "fields.conformal.png",
                                      str(folders[1]): "blobs.conformal.png"}


def test_the_two_folder_report_distances_against_brute_force(pipe, folders, tmp_path):
    report = score_folders(pipe.encoder, pipe.stats, folders, tmp_path / "out")
    (pair,) = report.comparisons
    assert (pair["a"], pair["b"]) == tuple(map(str, folders))
    for key in ("conformity", "log_likelihood"):
        a = np.array([r[key] for r in report.rows if r["folder"] == pair["a"]])
        b = np.array([r[key] for r in report.rows if r["folder"] == pair["b"]])
        assert pair[key]["ks_statistic"] == pytest.approx(brute_ks(a, b), abs=1e-12)
        assert pair[key]["wasserstein_1"] == pytest.approx(brute_w1(a, b), rel=1e-9)
        assert pair[key]["mean_difference"] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        assert pair[key]["median_difference"] == pytest.approx(np.median(a) - np.median(b), rel=1e-12)


def brute_ks(a, b) -> float:
    """sup over every data point of |F_a - F_b|, F counting values <= x."""
    return max(abs((a <= x).mean() - (b <= x).mean()) for x in np.concatenate([a, b]))


def brute_w1(a, b) -> float:
    """Wasserstein-1 of two samples as the mean |quantile_a(u) - quantile_b(u)| over u,
    exactly, on the common refinement of both step functions."""
    cuts = np.unique(np.concatenate([np.arange(len(a) + 1) / len(a), np.arange(len(b) + 1) / len(b)]))
    mids = (cuts[:-1] + cuts[1:]) / 2
    qa, qb = np.sort(a)[(mids * len(a)).astype(int)], np.sort(b)[(mids * len(b)).astype(int)]
    return float(np.sum(np.abs(qa - qb) * np.diff(cuts)))


def test_ks_and_wasserstein_on_known_samples():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 400), rng.normal(0.5, 1, 300)
    d, p = ks_statistic(a, b)
    assert d == pytest.approx(brute_ks(a, b), abs=1e-12) and p < 1e-4
    assert wasserstein_1(a, b) == pytest.approx(brute_w1(a, b), rel=1e-9)
    assert wasserstein_1(a, a + 0.25) == pytest.approx(0.25, rel=1e-9)  # a shift moves every unit of mass
    same_d, same_p = ks_statistic(a, a.copy())
    assert same_d == 0 and same_p == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    assert d == pytest.approx(scipy_stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert wasserstein_1(a, b) == pytest.approx(scipy_stats.wasserstein_distance(a, b), rel=1e-9)


def test_one_folder_may_be_given_alone_and_a_missing_one_writes_nothing(pipe, folders, tmp_path):
    report = score_folders(pipe.encoder, pipe.stats, str(folders[1]), tmp_path / "one")  # not split up
    assert {r["folder"] for r in json.loads((tmp_path / "one" / "scores.json").read_text())["rows"]} == {
        str(folders[1])}
    assert report is not None
    with pytest.raises(StatsError, match="no-such-folder: not a directory of images"):
        score_folders(pipe.encoder, pipe.stats, [str(folders[0]), str(tmp_path / "no-such-folder")],
                      tmp_path / "none")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("n", [1, 4, 5, 12, 40])
def test_the_contact_sheets_rows_never_show_an_image_twice(n):
    rows = [{"file": f"{k}.png", "conformity": float(v)}
            for k, v in enumerate(np.random.default_rng(n).permutation(n))]
    most, least = extremes(rows, count=8)
    values = sorted((r["conformity"] for r in rows), reverse=True)
    assert [r["conformity"] for r in most] == values[:len(most)]  # the top ones, most first
    assert [r["conformity"] for r in least] == values[::-1][:len(least)]  # the bottom ones, least first
    assert not {r["file"] for r in most} & {r["file"] for r in least}
    assert len(most) == min(8, (n + 1) // 2) and len(least) == min(8, n // 2)


def test_a_second_run_encodes_nothing_and_a_changed_file_is_scored_again(pipe, folders, tmp_path):
    out = tmp_path / "out"
    first_encoder = CountingEncoder(pipe.encoder)
    score_folders(first_encoder, pipe.stats, folders, out)
    csv_before = (out / "scores.csv").read_bytes()
    assert first_encoder.count == 60

    again_encoder = CountingEncoder(pipe.encoder)
    again = score_folders(again_encoder, pipe.stats, folders, out)
    assert again_encoder.count == 0 and (again.encoded, again.reused) == (0, 60)
    assert (out / "scores.csv").read_bytes() == csv_before and len(again.skipped) == 1

    changed = folders[1] / "b002.png"
    fixture_images(1, seed=99, size=48)[0].save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    lines = (out / CACHE_NAME).read_text().splitlines(keepends=True)
    (out / CACHE_NAME).write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a kill mid-line
    third_encoder = CountingEncoder(pipe.encoder)
    third = score_folders(third_encoder, pipe.stats, folders, out)
    assert third_encoder.count == 2 and third.encoded == 2  # the changed file and the half-written one
    row = next(r for r in third.rows if r["path"] == str(changed))
    assert row["conformity"] == pytest.approx(float(pipe.stats.conformity(pipe.encode(changed))), abs=1e-6)

    other_stats = ModalityStats(mean=pipe.stats.mean, mean_unit=pipe.stats.mean_unit, n=pipe.stats.n)
    fourth_encoder = CountingEncoder(pipe.encoder)
    score_folders(fourth_encoder, other_stats, folders, out)  # other stats: nothing is reused
    assert fourth_encoder.count == 60


def test_stats_without_a_population_give_no_percentiles(pipe, folders, tmp_path):
    old = ModalityStats(mean=pipe.stats.mean, mean_unit=pipe.stats.mean_unit, n=pipe.stats.n,
                        whitening=pipe.stats.whitening, provenance={"encoder": "tiny"})
    report = score_folders(pipe.encoder, old, folders[1:], tmp_path / "out")
    assert all(r["conformity_percentile"] is None and r["log_likelihood_percentile"] is None
               for r in report.rows)
    assert report.comparisons == [] and report.summary["stats"]["percentiles"] is False
    table = list(csv.DictReader(io.StringIO((tmp_path / "out" / "scores.csv").read_text())))
    assert table[0]["conformity_percentile"] == "" and float(table[0]["conformity"]) > 0
    with pytest.raises(StatsError, match="no readable images"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "x.png").write_bytes(b"not a png")
        score_folders(pipe.encoder, old, [empty], tmp_path / "out2")
    with pytest.raises(StatsError, match="given twice"):
        score_folders(pipe.encoder, old, [folders[1], folders[1]], tmp_path / "out3")


# -- the command line -------------------------------------------------------------------------
def vslerp(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "vslerp_app", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})}, cwd=cwd)


def readme_fixture_command() -> list[str]:
    """The README's own `vslerp score` line for the tiny fixture (the one behind its picture)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Scoring folders", 1)[1]
    (command,) = re.findall(r"`(vslerp score --model tiny-karlo[^`]*)`", text, re.S)
    return command.split()


def test_cli_score_two_folders_as_the_readme_runs_it(karlo_dir, folders, tmp_path):
    for name, target in (("tiny-karlo", karlo_dir), ("fields", folders[0]), ("blobs", folders[1])):
        (tmp_path / name).symlink_to(target)
    command = readme_fixture_command()
    assert command[:2] == ["vslerp", "score"]
    result = vslerp(*command[1:], "--batch-size", 16, "--sheet", 4, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fields: 40 images (1 unreadable skipped)" in result.stdout
    assert "fields vs blobs: conformity KS D=" in result.stdout
    assert "scored 60 images (60 encoded, 0 from an earlier run, 1 unreadable skipped)" in result.stdout
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} >= {"scores.csv", "scores.json", "report.png",
                                               "fields.conformal.png", "blobs.conformal.png"}
    again = vslerp(*command[1:], cwd=tmp_path)
    assert again.returncode == 0 and "(0 encoded, 60 from an earlier run" in again.stdout
    missing = vslerp("score", "--model", karlo_dir, "--images", tmp_path / "nope", "--out", out)
    assert missing.returncode == 2 and "not a directory of images" in missing.stderr


def test_cli_score_in_a_reference_space(tmp_path):
    from test_reference import SPEC, TINY, TINY_CONFIG

    from pipelines.reference_encoder import CONFIG_ENV

    config = tmp_path / f"{TINY}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    env = {CONFIG_ENV: str(config)}
    pop, scored = tmp_path / "population", tmp_path / "scored"
    pop.mkdir()
    scored.mkdir()
    for i, img in enumerate(fixture_images(48, seed=7)):
        img.save(pop / f"{i:03d}.png")
    for i, img in enumerate(fixture_images(6, seed=8)):
        img.save(scored / f"{i:03d}.png")
    stats_file = tmp_path / "ref.safetensors"
    made = vslerp("stats", "--reference", SPEC, "--images", pop, "--out", stats_file, env=env)
    assert made.returncode == 0, made.stderr
    assert ModalityStats.load(stats_file).has_population
    result = vslerp("score", "--reference", SPEC, "--stats", stats_file, "--images", scored,
                    "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert data["stats"]["space"] == SPEC and len(data["rows"]) == 6
    assert all(0 <= r["conformity_percentile"] <= 100 for r in data["rows"])
    # The values are the reference space's readouts of the same images.
    from pipelines.reference_encoder import register_model_config
    from vslerp_app.reference import ReferenceReadout

    register_model_config(config)
    readout = ReferenceReadout.load(SPEC, stats=stats_file, device="cpu")
    expected = readout.readouts([Image.open(scored / r["file"]).convert("RGB") for r in data["rows"]])
    for row, ref in zip(data["rows"], expected, strict=True):
        assert row["conformity"] == pytest.approx(ref["frame_conformity"], abs=1e-6)


# -- sequences: a morph's frames scored for smoothness, side by side ------------------------------
@pytest.fixture(scope="module")
def morphs(tmp_path_factory):
    """Two 12-frame morphs from A to B: a crossfade (files frame1 ... frame12, so name order must
    read digits as numbers) and a hard cut (six frames of A, then six of B)."""
    root = tmp_path_factory.mktemp("morphs")
    a, b = fixture_images(2, seed=31, size=48)
    fade, cut = root / "crossfade", root / "cut"
    fade.mkdir()
    cut.mkdir()
    for i in range(12):
        Image.blend(a, b, i / 11).save(fade / f"frame{i + 1}.png")
        (a if i < 6 else b).save(cut / f"{i:02d}.png")
    return fade, cut


def test_sequences_are_scored_frame_by_frame_and_measured(pipe, morphs, tmp_path):
    from vslerp_app.score import score_sequences
    from vslerp_app.smoothness import cosine_steps, gini

    fade, cut = morphs
    summary = score_sequences(pipe.encoder, pipe.stats, [fade, cut], tmp_path / "out")
    by_name = {s["name"]: s for s in summary["sequences"]}
    assert list(by_name) == ["crossfade", "cut"]
    files = [r["file"] for r in by_name["crossfade"]["rows"]]
    assert files == [f"frame{i}.png" for i in range(1, 13)]  # frame2 before frame10
    # each frame's readouts are the engine's readouts of that image
    emb = torch.stack([pipe.encode(fade / f) for f in files]).double()
    for row, e in zip(by_name["crossfade"]["rows"], emb, strict=True):
        expected = pipe.stats.readouts(e.float())
        assert row["conformity"] == pytest.approx(expected["conformity"], abs=1e-6)
        assert row["conformity_percentile"] == pytest.approx(expected["conformity_percentile"], abs=1e-3)
    measured = by_name["crossfade"]["smoothness"]["model"]
    u = (emb / emb.norm(dim=1, keepdim=True)).numpy()
    reference = 1 - np.sum(u[:-1] * u[1:], axis=1)
    np.testing.assert_allclose(measured["steps"], reference, rtol=1e-4, atol=1e-7)
    assert measured["smoothness"] == pytest.approx(1 - gini(reference), abs=1e-4)
    np.testing.assert_allclose(cosine_steps(emb), reference, rtol=1e-9, atol=1e-12)
    # a hard cut: one step makes the whole change
    jump = by_name["cut"]["smoothness"]["model"]
    assert jump["largest_jump"]["frames"] == [5, 6] and jump["smoothness"] == pytest.approx(1 / 11, abs=1e-6)
    assert jump["ppl"] == pytest.approx(11 * jump["path_length"] ** 2, rel=1e-6)
    # the files
    out = tmp_path / "out"
    with open(out / "sequences.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and rows[0]["sequence"] == "crossfade" and rows[11]["step_to_next"] == ""
    assert float(rows[12 + 5]["step_to_next"]) == pytest.approx(jump["largest_jump"]["distance"])
    assert json.loads((out / "sequences.json").read_text())["sequences"][1]["name"] == "cut"
    with Image.open(out / "sequences.png") as im:
        assert im.format == "PNG" and im.height > 500


def test_cli_scores_a_video_beside_a_folder_and_refuses_what_is_not_a_sequence(karlo_dir, morphs, tmp_path):
    from vslerp_app.outputs import write_video

    fade, cut = morphs
    video = tmp_path / "fade.mp4"
    frames = [np.asarray(Image.open(fade / f"frame{i}.png").convert("RGB")) for i in range(1, 13)]
    write_video(str(video), frames, 4.0, "mp4")
    out = tmp_path / "report"
    result = vslerp("score", "--model", karlo_dir, "--video", video, "--sequence", cut, "--out", out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("fade.mp4: 12 frames, smoothness (1 - Gini) ")
    assert lines[1].startswith("cut: 12 frames, smoothness (1 - Gini) 0.091,") and "(frames 5-6)" in lines[1]
    summary = json.loads((out / "sequences.json").read_text())
    assert [s["frames"] for s in summary["sequences"]] == [12, 12]
    assert [r["file"] for r in summary["sequences"][0]["rows"]][:2] == ["fade.mp4#0000", "fade.mp4#0001"]
    one = tmp_path / "one"
    one.mkdir()
    Image.open(cut / "00.png").save(one / "only.png")
    (tmp_path / "notes.mp4").write_text("not a video")
    for flag, path, words in (("--sequence", one, "1 frame; a sequence needs at least 2"),
                              ("--video", tmp_path / "notes.mp4", "not a video ffmpeg can read"),
                              ("--sequence", tmp_path / "nope", "neither a folder of frames nor a video")):
        refused = vslerp("score", "--model", karlo_dir, flag, path, "--out", tmp_path / "x")
        assert refused.returncode == 2 and words in refused.stderr and str(path) in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before anything was written
