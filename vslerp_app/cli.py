"""The `vslerp` command line: models, fixture, render, stats, score.

Each subcommand parses its arguments here and hands over to the package that does the
work. Errors a user can fix print one line and exit non-zero; --debug shows tracebacks.
Start-up is quiet (no library warnings or loading bars) unless --verbose. SPEC options
(`--theta`, `--alpha`) take values that start with a minus as written (`--alpha -1:3:16`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from pipelines.fixtures import FIXTURE_KINDS
from pipelines.presets import DEFAULT_MAX_BATCH, DEFAULT_MODEL
from vslerp_app.outputs import DEFAULT_FPS
from vslerp_app.registry import DEFAULT_DATASET, DEFAULT_SPLIT, user_stats_path
from vslerp_app.specs import ALPHA_ADVICE

# Options whose value may start with a minus (`_spec_argument`). argparse reads "-1:3:16" or
# "-1,0,1" after an option as another option (only plain negative numbers pass), so
# `_join_negative_values` writes such a pair as `--alpha=-1:3:16` before parsing.
_SPEC_OPTIONS: set[str] = set()
_NEGATIVE_VALUE = re.compile(r"-\.?\d")  # -1, -0.5, -.5, -1:3:16, -1,0,1

_FIT_EXPLANATION = (
    "  a, b: the Eq. 11 fit C_hat = a * cos(m, v) + b over these images: the cosine to the image\n"
    "        mean m, scaled and shifted, estimates an image's conformity C (Eq. 10: its mean cosine\n"
    "        to the set). Readouts use exact conformity when the file has the mean of unit vectors\n"
    "        (this one does); a, b are the estimate's calibration.\n"
    "  pearson: correlation of that estimate with exact conformity over the images; near 1 means\n"
    "        cos(m, v) ranks images by conformity almost perfectly (the paper: 0.9998 on MS-COCO\n"
    "        with ViT-B/32, a = 1.461, b = -0.002); lower means the estimate is rough for this\n"
    "        encoder or these images.")


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _cmd_models(args) -> int:
    import json

    from pipelines import list_presets
    from vslerp_app.models import preset_status

    presets = [preset_status(name) for name in list_presets()]
    if args.json:
        print(json.dumps(presets, indent=2))
        return 0
    for p in presets:
        steps = f"{p['steps']} + {p['super_res_steps']} super-res" if p["super_res_steps"] else p["steps"]
        where = p["local_snapshot"] or "not downloaded yet (the first load downloads it)"
        if p["stats_present"]:
            stats = f"{p['stats_path']} ({p['conformity_label']})"
        elif p["mean_source"]:
            stats = "the mean in {}/{} (mean-only): {}".format(*p["mean_source"], p["conformity_label"])
        else:
            stats = f"none found: {p['conformity_label']}"
        if p["full_stats_command"]:
            stats += ("\n           full statistics (exact conformity, likelihood, percentiles): "
                      f"`{p['full_stats_command']}`")
        print(f"{p['name']}{' (default)' if p['default'] else ''}: {p['description']}\n"
              f"  hub:     {p['hub_id']}: {where}\n"
              f"  encoder: {p['encoder']} ({p['embedding_dim']}-d)\n"
              f"  frames:  {p['resolution']} px, {steps} steps, guidance {p['guidance_scale']:g}; "
              f"preview {p['preview_resolution']} px, {p['preview_steps']} steps\n"
              f"  stats:   {stats}")
    print("\nAny local directory in the hub layout works too: --model DIR "
          "(`vslerp fixture karlo DIR` writes a tiny one).")
    return 0


def _cmd_fixture(args) -> int:
    from pipelines.loading import library_output
    from vslerp_app.fixtures import write_fixture

    with library_output():
        path = write_fixture(args.kind, args.dir, layout=args.layout, seed=args.seed)
    print(f"wrote tiny {args.kind} pipeline to {path}")
    return 0


def _cmd_stats(args) -> int:
    if args.reference is not None:
        return _stats_reference(args)
    if args.captions is not None:
        raise CLIError("--captions needs --reference (text stats use an open_clip text tower)")
    if (args.images is None) == (args.dataset is None):
        raise CLIError("give one of --images DIR (a folder) or --dataset ID (a hub image dataset)")
    if args.images is not None and args.out is None:
        raise CLIError("--images needs --out FILE")
    from vslerp_app import load_pipeline

    engine = load_pipeline(args.model, device=args.device, stats=None)
    result = _stats_dataset(args, engine) if args.dataset else _stats_folder(args, engine)
    path = result.stats.save(args.out or user_stats_path(engine.encoder.name))
    s = result.stats
    print(f"wrote {path}: {s.dim}-d stats of {result.encoded} images "
          f"({len(result.skipped)} unreadable skipped)")
    if s.pearson is None:
        print(f"  a={s.a:.4f} b={s.b:.4f} pearson=n/a: every image here is equally conformal (two "
              "images always are: each one's conformity is the cosine between them), so there is no "
              "slope to fit; a=0 and b is that conformity")
    else:
        print(f"  a={s.a:.4f} b={s.b:.4f} pearson={s.pearson:.5f}")
    print(f"  whitening: {_whitening_line(s)}")
    print(f"  the population's scale: {len(s.conformity_quantiles)} quantiles of member conformity"
          + ("" if s.log_likelihood_quantiles is None else " and log-likelihood"))
    print(_FIT_EXPLANATION)
    _print_skipped_and_warnings(result)
    return 0


def _cmd_stats_import(args) -> int:
    """`vslerp stats import FILE`: a mean vector saved as mean-only stats with its provenance."""
    import datetime
    import hashlib

    from vslerp_app.stats import ModalityStats, read_mean_file

    mean = read_mean_file(args.file)
    encoder, dim = _import_target(args)
    if dim is not None and mean.shape[0] != dim:
        raise CLIError(f"{args.file}: a {mean.shape[0]}-d mean, but {encoder} makes {dim}-d embeddings")
    digest = hashlib.sha256(open(args.file, "rb").read()).hexdigest()  # noqa: SIM115 (read once)
    stats = ModalityStats.from_mean(
        mean, encoder=encoder, imported_from=os.path.abspath(args.file), imported_sha256=digest,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **({"dataset": args.source_name} if args.source_name else {}))
    path = stats.save(args.out or user_stats_path(encoder))
    print(f"wrote {path}: mean-only stats ({stats.dim}-d) of {encoder} from {args.file} "
          f"({stats.conformity_label}; full statistics: `vslerp stats --model M --dataset ID`)")
    return 0


def _import_target(args) -> tuple[str, int | None]:
    """(encoder name, embedding size or None) of --model (a preset needs no loading) or --encoder."""
    if args.encoder:
        return args.encoder, None
    from pipelines import get_preset, list_presets

    if args.model in list_presets():
        preset = get_preset(args.model)
        return preset.encoder, preset.embedding_dim
    from vslerp_app import load_pipeline

    engine = load_pipeline(args.model, device="cpu", stats=None)
    return engine.encoder.name, engine.encoder.dim


def _stats_folder(args, engine):
    from vslerp_app.folder_stats import folder_stats

    return folder_stats(engine.encoder, args.images, batch_size=args.batch_size,
                        dataset=args.source_name, model_id=args.model)


def _stats_dataset(args, engine):
    """Stream ``--dataset``; on Ctrl-C say how to resume (the state is on disk)."""
    from vslerp_app.dataset_stats import dataset_stats, state_dir_for

    if args.source_name:
        raise CLIError("--source-name labels a folder (--images); a dataset is named by its id")
    try:
        result = dataset_stats(engine.encoder, args.dataset, split=args.split, limit=args.limit,
                               batch_size=args.batch_size, model_id=args.model)
    except KeyboardInterrupt:
        print(f"vslerp stats: interrupted; the images encoded so far are kept in "
              f"{state_dir_for(engine.encoder.name, args.dataset, args.split)}: run the same command "
              "again to resume", file=sys.stderr)
        raise
    if result.resumed_from:
        print(f"resumed: {result.resumed_from} images read back from the interrupted run")
    return result


def _whitening_line(s) -> str:
    """Whether ``s`` has whitening, against the rule that decides it (n >= 3 d)."""
    from vslerp_app.stats import WHITENING_MIN_RATIO as k

    if s.whitening is not None:
        return f"yes (log-likelihood readout; n = {s.n} >= {k} d = {k * s.dim})"
    return f"none (needs n >= {k} d = {k * s.dim}, got {s.n})"


def _print_skipped_and_warnings(result) -> None:
    for name, reason in result.skipped[:10]:
        print(f"  skipped {name}: {reason}", file=sys.stderr)
    for warning in result.warnings:
        print(f"vslerp stats: warning: {warning}", file=sys.stderr)


def _stats_reference(args) -> int:
    """`vslerp stats --reference SPEC`: image (and caption) stats of an open_clip space + report."""
    from pipelines.reference_encoder import OpenClipEncoder, parse_reference
    from vslerp_app.caption_stats import reference_stats

    model_name, pretrained = parse_reference(args.reference)
    encoder = OpenClipEncoder(model_name, pretrained, args.device, spec=args.reference)
    if args.images is None or args.out is None:
        raise CLIError("--reference needs --images DIR and --out FILE")
    result = reference_stats(encoder, args.images, args.out, captions=args.captions,
                             batch_size=args.batch_size, dataset=args.source_name)
    for modality, s in result.report["modalities"].items():
        pearson = "n/a" if s["pearson"] is None else f"{s['pearson']:.5f}"
        ratio = "n/a" if s["mean_to_sigma"] is None else f"{s['mean_to_sigma']:.3f}"
        print(f"{modality}: n={s['n']} a={s['a']:.4f} b={s['b']:.4f} pearson={pearson} "
              f"|m|/|sigma|={ratio}")
    gap = result.report["modality_gap"]
    if gap:
        print(f"modality gap: |m_img - m_txt|={gap['mean_distance']:.4f} "
              f"cos(m_img, m_txt)={gap['mean_cosine']:.4f}")
    written = [result.paths["image"]] + ([result.paths["text"]] if result.text is not None else [])
    written += [result.paths["report_json"], result.paths["report_png"]]
    print(f"wrote {', '.join(map(str, written))} ({result.image.encoded} images, "
          f"{len(result.image.skipped)} unreadable skipped)")
    print(_FIT_EXPLANATION)
    _print_skipped_and_warnings(result.image)
    return 0


def _cmd_render(args) -> int:
    """`vslerp render`: one sequence, one path, or many from --jobs (split over accelerate processes)."""
    try:
        _check_path_options(args)
        if args.jobs is not None:
            return _render_jobs(args)
        if args.keyframes is not None:
            m = _render_path(args)
        else:
            missing = [f"--{k}" for k in ("source", "target", "theta") if getattr(args, k) is None]
            if missing:
                raise CLIError(f"missing {', '.join(missing)} (or give --keyframes, or --jobs FILE)")
            m = _render_one(args)
    except CLIError:
        raise
    except Exception as e:
        if args.debug:
            raise
        raise CLIError(" ".join(str(e).split()) or type(e).__name__) from None
    run = m["runs"][-1]
    files = [f for f in (o.get("file") for o in m["outputs"].values()) if f]
    count = m["frame_count"]
    print(f"wrote {count} frame{'' if count == 1 else 's'} to {args.out} ({run['frames_rendered']} rendered, "
          f"{run['frames_reused']} already done, {run['seconds']:.1f} s): frames/, manifest.json"
          + "".join(f", {f}" for f in files))
    return 0


def _render_options(args) -> dict:
    """The options every render of this command shares: outputs and sampling."""
    return dict(gif=args.gif, mp4=args.mp4, zip=args.zip, fps=args.fps, preview=args.preview,
                steps=args.steps, super_res_steps=args.super_res_steps, guidance_scale=args.guidance,
                resolution=args.resolution, strength=args.strength,
                adapter_scale=args.adapter_scale, prompt=args.prompt)


def _sampling(args):
    """The command's `Sampling` (``--steps`` is the preview's with ``--preview``)."""
    from vslerp_app.requests import Sampling

    return Sampling.from_options(args.preview, args.steps, super_res_steps=args.super_res_steps,
                                 guidance_scale=args.guidance, resolution=args.resolution,
                                 strength=args.strength, adapter_scale=args.adapter_scale, prompt=args.prompt,
                                 max_batch=args.max_batch)


def _outputs(args):
    """Which derived files the command writes besides the frames and manifest."""
    from vslerp_app.outputs import OutputRequest

    return OutputRequest(gif=args.gif, mp4=args.mp4, zip=args.zip, fps=args.fps)


def _resolution(text: str) -> int | tuple[int, int]:
    """--resolution: "768" (a square side) or "1024x768" (width x height)."""
    import argparse

    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
        sizes = [int(p) for p in parts]
        return sizes[0] if len(sizes) == 1 else (sizes[0], sizes[1])
    raise argparse.ArgumentTypeError(f"expected a side in pixels (768) or WIDTHxHEIGHT (1024x768), "
                                     f"got {text!r}")


def _load_kwargs(args) -> dict:
    return dict(dtype=args.dtype, stats=args.stats, offload=args.offload, reference=args.reference,
                reference_stats=args.reference_stats)


def _progress(done: int, total: int) -> None:
    print(f"render: {done}/{total} frames", file=sys.stderr, flush=True)


OFFLINE_HINT = """Without the hub, try a tiny random-weight model (its frames are noise):
    vslerp fixture karlo /tmp/tiny-karlo
    vslerp render --model /tmp/tiny-karlo ...
or pass a downloaded copy of the model: --model DIR"""


def _load_for_render(args):
    """The model, once the output folder is known to be creatable (nothing is written before it loads)."""
    from pipelines import HubUnreachableError
    from vslerp_app import load_pipeline
    from vslerp_app.render import check_output_folder

    check_output_folder(args.out)
    try:
        engine = load_pipeline(args.model, device=args.device, max_batch=args.max_batch or DEFAULT_MAX_BATCH,
                               **_load_kwargs(args))
    except HubUnreachableError as e:  # offline: say what works without the hub, as app.py does
        raise CLIError(f"cannot load model {args.model!r}: {e}.\n{OFFLINE_HINT}") from None
    if args.super_res_steps is not None and engine.kind != "karlo":
        print(f"vslerp render: warning: --super-res-steps is Karlo's; {engine.kind} has no super-resolution "
              "stage, so it is ignored", file=sys.stderr)
    return engine


def _render_one(args) -> dict:
    import dataclasses

    from vslerp_app.render import check_sweep_request, render_request

    # Refuse bad values, unreadable images and an unwritable folder before loading the model;
    # alphas aimed at a conformity are found once the model (and its stats) is loaded.
    request = check_sweep_request(args.source, args.target, args.theta, args.alpha, args.seed, grid=args.grid,
                                  fps=args.fps, max_batch=args.max_batch, conformity=args.conformity)
    engine = _load_for_render(args)
    request = dataclasses.replace(request, sampling=_sampling(args))
    manifest = render_request(engine, request, args.out, _outputs(args), progress=_progress)
    _report_aims(manifest)
    return manifest


def _report_aims(manifest: dict) -> None:
    """One line per frame whose wanted conformity is out of reach, and a count of the rest."""
    aims = [(f["theta"], f["aim"]) for f in manifest["frames"] if f.get("aim")]
    if not aims:
        return
    missed = [(theta, a) for theta, a in aims if not a["reachable"]]
    print(f"aimed at a conformity: {len(aims) - len(missed)} of {len(aims)} frames reach it", file=sys.stderr)
    for theta, a in missed:
        print(f"  theta {theta:g}: conformity {a['wanted']:g} is out of reach; closest "
              f"{a['achieved']:.4f} at alpha {a['alpha']:.4f}", file=sys.stderr)


_PATH_OPTIONS = ("loop", "frames", "spacing", "ease")


def _check_path_options(args) -> None:
    """--keyframes goes with the path options and without a pair's; the path options need it."""
    if args.keyframes is None:
        given = [f"--{k}" for k in _PATH_OPTIONS if getattr(args, k) not in (None, False)]
        if given and args.jobs is not None:
            raise CLIError(f"--jobs takes the path options from the jobs file; drop {', '.join(given)}")
        if given:
            verb = "shapes" if len(given) == 1 else "shape"
            raise CLIError(f"{', '.join(given)} {verb} a path: give --keyframes A B ... too")
        return
    given = [f"--{k}" for k in ("source", "target", "theta", "conformity", "jobs")
             if getattr(args, k) is not None]
    given += ["--grid"] if args.grid else []
    if given:
        raise CLIError(f"--keyframes renders a path through its images; drop {', '.join(given)}")


def _render_path(args) -> dict:
    """`vslerp render --keyframes A B C ...`: a path through keyframes."""
    from vslerp_app.render import checked_path_request, render_request
    from vslerp_app.requests import PathRequest

    request = checked_path_request(PathRequest.parse(
        None, keyframes=args.keyframes, frames=args.frames, alphas="0" if args.alpha is None else args.alpha,
        seed=args.seed, sampling=_sampling(args), loop=args.loop, spacing=args.spacing or "uniform",
        ease=args.ease, fps=args.fps))
    engine = _load_for_render(args)
    return render_request(engine, request, args.out, _outputs(args), progress=_progress)


def _render_jobs(args) -> int:
    from vslerp_app.jobs import run_jobs

    given = [f"--{k}" for k in ("source", "target", "theta", "alpha", "conformity")
             if getattr(args, k) is not None]
    if given:
        raise CLIError(f"--jobs takes source, target, theta and alpha from the jobs file; "
                       f"drop {', '.join(given)}")
    result = run_jobs(args.model, args.jobs, args.out, device=args.device, default_seed=args.seed,
                      default_grid=args.grid, max_batch=args.max_batch, **_load_kwargs(args),
                      **_render_options(args))
    if result["summary"] is not None:
        counts, rows = result["summary"]["counts"], result["summary"]["jobs"]
        print(f"{counts['complete']} of {len(rows)} jobs complete in {args.out} ({counts['failed']} "
              f"failed, {counts['refused']} refused; {result['num_processes']} process(es)); "
              f"see {os.path.join(args.out, 'jobs.json')}")
    return 1 if result["failed"] else 0


def _cmd_score(args) -> int:
    """`vslerp score`: conformity and likelihood of every image, on the stats population's scale;
    with --sequence/--video, each sequence's smoothness too."""
    from vslerp_app.folder_stats import find_images
    from vslerp_app.score import check_sequence, score_folders

    sequences = args.sequence or []  # --sequence and --video, in the order given
    if not args.images and not sequences:
        raise CLIError("give --images DIR (folders of images), or --sequence DIR / --video FILE "
                       "(morph sequences), at least once")
    for folder in args.images or []:  # refuse a wrong folder before loading a model
        find_images(folder)
    for source in sequences:
        check_sequence(source)
    encoder, stats, space = _score_encoder(args)
    if sequences:
        _score_sequences(encoder, stats, space, sequences, args)
        if not args.images:
            return 0
    report = score_folders(encoder, stats, args.images, args.out, space=space, batch_size=args.batch_size,
                           sheet_count=args.sheet)
    for f in report.folders:
        c = f["conformity"] or {}
        pct = f["conformity_percentile"]
        typical = "" if pct is None else f", median percentile {pct['median']:.0f}"
        print(f"{f['folder']}: {f['count']} images ({f['skipped']} unreadable skipped), conformity mean "
              f"{c.get('mean', float('nan')):.4f} median {c.get('median', float('nan')):.4f}{typical}")
    for pair in report.comparisons:
        d = pair["conformity"]
        if d:
            print(f"{pair['a']} vs {pair['b']}: conformity KS D={d['ks_statistic']:.3f} "
                  f"(p={d['ks_pvalue']:.2g}), Wasserstein-1={d['wasserstein_1']:.4g}")
    if not stats.has_population:
        print("note: these stats carry no population distribution, so no percentiles "
              "(recompute them with `vslerp stats`)", file=sys.stderr)
    print(f"scored {len(report.rows)} images ({report.encoded} encoded, {report.reused} from an earlier run, "
          f"{len(report.skipped)} unreadable skipped) in {stats.conformity_label}; wrote {args.out}/: "
          f"scores.csv, scores.json, report.png, " + ", ".join(report.files["sheets"].values()))
    for name, reason in report.skipped[:10]:
        print(f"  skipped {name}: {reason}", file=sys.stderr)
    return 0


def _score_encoder(args):
    """(encoder, its image stats, what the space is called) of `vslerp score`."""
    if args.reference is not None:
        from vslerp_app.reference import ReferenceReadout

        readout = ReferenceReadout.load(args.reference, stats=args.stats, device=args.device)
        return readout.encoder, readout.stats, readout.space
    from vslerp_app import load_pipeline

    engine = load_pipeline(args.model, device=args.device, stats=args.stats)
    if engine.stats is None:
        raise CLIError(f"no image statistics for {args.model} ({engine.stats_note}); compute them "
                       f"with `vslerp stats --model {args.model} --images DIR --out FILE` and pass "
                       "--stats FILE")
    return engine.encoder, engine.stats, f"{args.model} ({engine.encoder.name})"


def _score_sequences(encoder, stats, space: str, sources: list[str], args) -> None:
    """`vslerp score --sequence/--video`: one line per sequence, files in OUT."""
    from vslerp_app.score import score_sequences

    summary = score_sequences(encoder, stats, sources, args.out, space=space, batch_size=args.batch_size)
    for s in summary["sequences"]:
        m = s["smoothness"]["model"]
        jump = m["largest_jump"]
        print(f"{s['name']}: {s['frames']} frames, smoothness (1 - Gini) {m['smoothness']:.3f}, "
              f"PDV {m['pdv']:.3g}, PPL {m['ppl']:.3g}, path length {m['path_length']:.3g}, largest jump "
              f"{jump['distance']:.3g} (frames {jump['frames'][0]}-{jump['frames'][1]}), directness "
              f"{100 * m['directness']['directness']:.0f}%")
    print(f"scored {len(summary['sequences'])} sequence(s) in {space}; wrote {args.out}/: "
          "sequences.csv, sequences.json, sequences.png")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vslerp-studio")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _folder(value: str) -> str:
    """argparse type of --out: an empty path (the current directory, unasked) is refused."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty; name a folder ('.' for the current one)")
    return value


def _file(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("empty; name a file")
    return value


def _spec_argument(p, *names: str, **kwargs) -> None:
    """An option taking a SPEC, whose value may start with a minus (`--alpha -1:3:16`)."""
    _SPEC_OPTIONS.update(n for n in names if n.startswith("--"))
    p.add_argument(*names, metavar="SPEC", **kwargs)


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--alpha -1:3:16` -> `--alpha=-1:3:16` for SPEC options (or an unambiguous prefix of one).

    An option that truly lacks its value (`--alpha --seed 1`, `--alpha` last) is left alone,
    so argparse still says "expected one argument".
    """
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out += argv[i:]
            break
        matches = [o for o in _SPEC_OPTIONS if o.startswith(token)] if token.startswith("--") else []
        if (token in _SPEC_OPTIONS or len(matches) == 1) and i + 1 < len(argv) \
                and _NEGATIVE_VALUE.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _add_models(sub) -> None:
    """`vslerp models`."""
    p = sub.add_parser(
        "models", help="the model presets, whether each is downloaded, and its stats",
        description="List the model presets (Karlo, Stable unCLIP -h and -l): each one's hub "
                    "repository and whether it is in the local hub cache, its CLIP image encoder, "
                    "default settings, and where its image-modality statistics come from.")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p.set_defaults(func=_cmd_models)


def _add_fixture(sub) -> None:
    """`vslerp fixture`."""
    p = sub.add_parser(
        "fixture", help="write a tiny random-weight pipeline in the hub layout",
        description="Write a tiny unCLIP pipeline with random weights (the real diffusers and "
                    "transformers classes, 32-d CLIP embeddings) in the same layout as the hub "
                    "repository, with its statistics file (vslerp-stats.safetensors). Load it "
                    "anywhere a model is asked for (--model DIR). Its frames are noise: it is for "
                    "tests and for trying the plumbing without downloading weights.")
    p.add_argument("kind", choices=list(FIXTURE_KINDS),
                   help="karlo (UnCLIPImageVariationPipeline), stable-unclip "
                        "(StableUnCLIPImg2ImgPipeline), kandinsky (Kandinsky 2.2: the prior and "
                        "decoder repositories as DIR/prior and DIR/decoder), ip-adapter-sd15 or "
                        "ip-adapter-sdxl (a Stable Diffusion 1.5 or SDXL base as DIR/base and "
                        "h94/IP-Adapter's files as DIR/IP-Adapter)")
    p.add_argument("dir", help="folder to write (created; files already there are overwritten)")
    p.add_argument("--layout", choices=["hub", "current"], default="hub",
                   help="hub: model_index.json as the real repository (saved by an older "
                        "diffusers); current: as today's diffusers saves it")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights (default 0; the same seed writes identical files)")
    p.set_defaults(func=_cmd_fixture)


def _add_stats(sub) -> None:
    """`vslerp stats`."""
    p = sub.add_parser(
        "stats", help="image-modality stats of a model's encoder over a folder or a hub dataset",
        description="Compute the statistics of a model's CLIP image encoder over a folder of "
                    "images or a streamed hub image dataset (--dataset): the mean m that vSLERP "
                    "rotates about (Eq. 12), the mean of unit "
                    "embeddings (exact conformity, Eq. 10), the Eq. 11 fit a, b with its Pearson "
                    "correlation, the whitening matrix for the log-likelihood readout (from 3 images per "
                    "dimension: MS-COCO val2017's 5,000 cover 768- to 1280-d) and the population's "
                    "scale (percentiles, out-of-sample). The output explains the numbers; see "
                    "stats/README.md.",
        epilog="Custom open_clip architectures: set VSLERP_OPEN_CLIP_CONFIG to "
               "NAME.json config file(s) (os.pathsep-separated), then use "
               "--reference open_clip:NAME/PRETRAINED.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="preset name or local pipeline directory")
    which.add_argument("--reference", metavar="SPEC",
                       help="an open_clip reference space, open_clip:MODEL/PRETRAINED (e.g. "
                            "open_clip:ViT-B-32/openai); also writes <stem>.report.json/.png")
    p.add_argument("--captions", metavar="FILE",
                   help="with --reference: captions (one per line, or a COCO captions JSON) for "
                        "text-modality stats, written to <stem>.text.safetensors beside --out")
    p.add_argument("--images", metavar="DIR", help="folder of images (searched recursively)")
    p.add_argument("--dataset", metavar="ID",
                   help="a Hugging Face image dataset (hub id, or a local directory in the same "
                        f"layout), streamed; e.g. {DEFAULT_DATASET} (MS-COCO 2017 val, 5,000 images). "
                        "Resumes after an interruption. Without --out, writes to the user's stats "
                        "cache, where the model finds them (stats/README.md)")
    p.add_argument("--split", default=DEFAULT_SPLIT,
                   help=f"with --dataset: the split (default {DEFAULT_SPLIT})")
    p.add_argument("--limit", type=int, metavar="N", help="with --dataset: encode at most N images")
    p.add_argument("--out", type=_file, help="stats file to write (.safetensors); required with --images")
    p.add_argument("--source-name", help="with --images: the data set's name in the provenance "
                                         "(default: the folder name)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images encoded at once (default 64; lower it if the GPU runs out of memory)")
    p.add_argument("--device", help="cuda, cpu, ... (default: CUDA if available)")
    p.set_defaults(func=_cmd_stats)


def _add_stats_import(sub) -> None:
    """`vslerp stats import FILE` (parsed as `stats-import`: see `_join_negative_values`)."""
    p = sub.add_parser(
        "stats-import", help="(`vslerp stats import FILE`) save a mean vector you have as mean-only stats",
        description="Save a mean vector of a model's raw image embeddings (.pt loaded with "
                    "weights_only, .npy without pickles, or .safetensors: one tensor or one named "
                    "mean/clip_mean/image_mean) as mean-only stats with its provenance, by default "
                    "in the user's stats cache where the model finds them.")
    p.add_argument("file", type=_file, help="the mean: .pt, .npy or .safetensors")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="preset name or local pipeline directory (its encoder)")
    which.add_argument("--encoder", help="the encoder's name (e.g. openai/clip-vit-large-patch14)")
    p.add_argument("--out", type=_file, help="stats file to write (default: the user's stats cache)")
    p.add_argument("--source-name", help="where the mean comes from, for the provenance")
    p.set_defaults(func=_cmd_stats_import)


def _add_path_options(p) -> None:
    """`vslerp render --keyframes A B C [--loop] [--frames N] [--spacing] [--ease]`."""
    path = p.add_argument_group(
        "paths through keyframes",
        "--keyframes A B C renders a path A -> B -> C instead of a source -> target sequence; "
        "--alpha is one value or one per segment. An open path over S segments includes both "
        "ends: uniform spacing puts keyframe k at frame k(N-1)/S (rounded, halves up); a loop "
        "does not repeat its first frame: keyframe k is frame kN/S.")
    path.add_argument("--keyframes", nargs="+", metavar="IMAGE", help="2 or more images, in order")
    path.add_argument("--loop", action="store_true", help="go back from the last keyframe to the first")
    path.add_argument("--frames", type=int, metavar="N",
                      help="the path's frame count (default: 8 a segment, +1 for an open path's end)")
    path.add_argument("--spacing", choices=["uniform", "angle", "perceptual"],
                      help="uniform: the same frames per segment (default); angle: frames in proportion "
                           "to each segment's angle on its vSLERP arc, turning by equal angles (one speed "
                           "throughout); perceptual: a preview pass measures the distance between "
                           "re-encoded frames along each segment, and neighbours are placed equally far "
                           "apart as measured")
    path.add_argument("--ease", action="store_true", help="ease in and out of every keyframe")


def _add_render(sub) -> None:
    """`vslerp render`."""
    p = sub.add_parser(
        "render", help="render a vSLERP frame sequence, a path through keyframes (or many, with "
                       "--jobs) to a folder",
        description="SPEC is a number (0.5), a comma list (0,0.25,1) or start:stop:count "
                    "(0:1:5, both ends included); a SPEC may start with a minus (--alpha -1:3:16). "
                    "theta and alpha pair up as a sweep (equal lengths, or one single value) or, "
                    "with --grid, as a grid (theta major). Re-running the same command resumes: "
                    "finished frames are kept.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="preset name, ip-adapter:BASE (an SD 1.5 or SDXL hub id, directory or "
                        ".safetensors) or local pipeline directory (default: %(default)s)")
    p.add_argument("--source", help="source image (theta = 0)")
    p.add_argument("--target", help="target image (theta = 1)")
    _spec_argument(p, "--theta", help="theta values in [0, 1]")
    which_alpha = p.add_mutually_exclusive_group()
    _spec_argument(which_alpha, "--alpha",
                   help=f"alpha values (default 0: plain SLERP); {ALPHA_ADVICE}")
    _spec_argument(which_alpha, "--conformity",
                   help="instead of --alpha: the conformity wanted for each frame's embedding "
                        "(one value, or a SPEC paired with --theta); each alpha is the one "
                        "nearest 0 in [-3, 3] giving it, or the closest value if none does; "
                        "the manifest gives the wanted and the achieved value")
    p.add_argument("--seed", type=int, default=0, help="noise path shared by every frame (default 0)")
    p.add_argument("--out", required=True, type=_folder,
                   help="output folder (resumed if it holds this render)")
    p.add_argument("--jobs", metavar="FILE",
                   help="JSON lines, one sequence per line: {\"source\", \"target\", \"theta\", "
                        "\"alpha\", \"seed\", \"name\", \"grid\"}, or a path: {\"keyframes\": [...], "
                        "\"frames\", \"loop\", \"spacing\", \"ease\", \"alpha\", ...}; output in "
                        "OUT/<name or index>; every line is checked first, a bad or failing job does not "
                        "stop the others (OUT/jobs.json says why); split over processes under accelerate "
                        "launch / torchrun")
    p.add_argument("--grid", action="store_true", help="every theta with every alpha")
    _add_path_options(p)
    _add_sampling_options(p)
    p.add_argument("--stats", metavar="FILE", help="image-modality stats file for alpha != 0")
    p.add_argument("--reference", metavar="SPEC",
                   help="open_clip reference space for extra readouts, open_clip:MODEL/PRETRAINED")
    p.add_argument("--reference-stats", metavar="FILE",
                   help="the reference space's image stats (default: the stats/ file named from SPEC)")
    p.add_argument("--gif", action="store_true", help="also write sequence.gif")
    p.add_argument("--mp4", action="store_true", help="also write sequence.mp4")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS,
                   help="GIF/MP4 frames per second (default %(default)g)")
    p.add_argument("--zip", action="store_true",
                   help="also write sequence.zip (frames, manifest and every other output)")
    p.add_argument("--device", help="cuda, cpu, ... (default: CUDA if available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--offload", action="store_true",
                   help="small GPUs: keep weights in CPU memory, each model on the GPU only while it "
                        "runs (less GPU memory, slower; CUDA only)")
    p.set_defaults(func=_cmd_render)


def _add_sampling_options(p) -> None:
    """`vslerp render`'s sampling settings (`Sampling`): quality, steps, guidance, size and the
    model family's own (strength, IP-Adapter's scale and prompt)."""
    p.add_argument("--preview", action="store_true", help="preview quality (fast, small)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    p.add_argument("--super-res-steps", type=int, help="Karlo super-resolution steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 is off)")
    p.add_argument("--resolution", type=_resolution, metavar="PX|WxH",
                   help="frame size: a side or WIDTHxHEIGHT (Kandinsky 2.2: multiples of 64 up to 1024; "
                        "default: the preset's)")
    p.add_argument("--strength", type=float,
                   help="below 1, start every frame from the source image's own latents, keeping its "
                        "layout (Kandinsky 2.2, IP-Adapter: img2img); 1 (default) starts from noise")
    p.add_argument("--adapter-scale", type=float,
                   help="IP-Adapter: how strongly the image embedding conditions the frames, in [0, 2] "
                        "(default 1: the image alone, as diffusers recommends for variations)")
    p.add_argument("--prompt", help="IP-Adapter: a text prompt steering every frame (default: none)")
    p.add_argument("--max-batch", type=int, help=f"frames at once, per chunk (default {DEFAULT_MAX_BATCH})")


def _add_common(p, default=None) -> None:
    """--debug and --verbose, before the subcommand or after it."""
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks on errors")
    p.add_argument("--verbose", action="store_true", default=default,
                   help="show the libraries' warnings and loading progress bars, and info logs")


def _add_score(sub) -> None:
    """`vslerp score`."""
    p = sub.add_parser(
        "score", help="conformity and likelihood of every image in folders, with percentiles in the "
                      "stats' population, and a report comparing the folders",
        description="Writes OUT/scores.csv, scores.json, report.png and <folder>.conformal.png (the most "
                    "and least conformal images). Re-running resumes: images already scored (same "
                    "path, size and time) are not encoded again.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default=DEFAULT_MODEL,
                       help="preset name or local pipeline directory whose encoder scores (default: "
                            "%(default)s)")
    which.add_argument("--reference", metavar="SPEC",
                       help="score in an open_clip reference space instead, open_clip:MODEL/PRETRAINED")
    p.add_argument("--images", action="append", metavar="DIR",
                   help="folder of images (recursive); repeat to compare folders")
    p.add_argument("--sequence", action="append", metavar="DIR",
                   help="a morph's frames, a folder of images in name order (ours or any tool's); "
                        "repeat to compare sequences side by side: smoothness, steps, conformity per frame "
                        "(sequences.csv, .json, .png)")
    p.add_argument("--video", action="append", dest="sequence", metavar="FILE",
                   help="a morph as a video (its frames in order); scored as --sequence, side by side")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--stats", metavar="FILE",
                   help="stats file of the encoder (default: the model's, or the reference space's "
                        "registered file)")
    p.add_argument("--batch-size", type=int, default=32, help="images encoded at once (default 32)")
    p.add_argument("--sheet", type=int, default=8,
                   help="images in each half (most, least conformal) of a folder's contact sheet")
    p.add_argument("--device", help="cuda, cpu, ... (default: CUDA if available)")
    p.set_defaults(func=_cmd_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vslerp", description="vSLERP Studio on the command line: edit an image by moving "
        "through the geometry of CLIP (vSLERP, Eq. 12) and read out each frame's conformity.")
    _add_common(parser, default=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_add_models, _add_fixture, _add_stats, _add_stats_import, _add_render, _add_score):
        add(sub)
    for p in sub.choices.values():  # after the subcommand too; SUPPRESS keeps a flag given before it
        _add_common(p, default=argparse.SUPPRESS)
    return parser


def _set_verbosity(verbose: bool) -> None:
    from pipelines.loading import set_verbose

    set_verbose(verbose)
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `vslerp stats import FILE` is the parser's `stats-import` (global flags take no value).
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is not None and argv[command:command + 2] == ["stats", "import"]:
        argv = [*argv[:command], "stats-import", *argv[command + 2:]]
    args = parser.parse_args(_join_negative_values(argv))
    _set_verbosity(args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("vslerp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vslerp models | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stdout's final flush goes nowhere)
        return 0
    except Exception as e:  # one clear line for the user, the traceback with --debug
        if args.debug:
            raise
        print(f"vslerp {args.command}: error: {e}", file=sys.stderr)
        return 2
