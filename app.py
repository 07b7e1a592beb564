"""vSLERP Studio in the browser: a Gradio app over the vSLERP engine.

    python app.py                      # the default model (karlo), from the Hugging Face hub
    python app.py --model DIR          # a local pipeline, e.g. a tiny fixture (`vslerp fixture karlo DIR`)
    VSLERP_MODEL=stable-unclip-l python app.py

`demo` (a `gr.Blocks`) is built at import time with the model loaded once; a Hugging Face
Space runs this file as it is. The UI only: models and math live in `pipelines/` and
`vslerp_app/`, the helpers without Gradio in `vslerp_app/ui_support.py`.

Named API endpoints for `gradio_client`: `/preview` (one frame at theta, alpha: the image
and its readouts) and `/sequence` (a sweep: gallery, conformity plot, MP4, GIF, ZIP).
"""

from __future__ import annotations

# ZeroGPU (Hugging Face Spaces) wants `spaces` imported before anything touches CUDA.
try:
    import spaces
except ImportError:  # everywhere else: the decorator is a no-op
    spaces = None

import argparse  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from pipelines import DEFAULT_MODEL, load_pipeline  # noqa: E402
from vslerp_app import ui_support as ui  # noqa: E402
from vslerp_app.images import ImageInputError, load_image  # noqa: E402
from vslerp_app.render import render_sequence  # noqa: E402

logger = logging.getLogger("vslerp_studio")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
GPU_QUEUE = "gpu"  # every event that runs the model shares this concurrency id: one GPU job at a time


# -- configuration and the model (once, at start) ------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="vSLERP Studio (Gradio app)", allow_abbrev=False)
    p.add_argument("--model", default=env("VSLERP_MODEL", DEFAULT_MODEL),
                   help="preset name or local pipeline directory (env VSLERP_MODEL; default: %(default)s)")
    p.add_argument("--stats", default=env("VSLERP_STATS"),
                   help="image-modality stats file of the model's encoder (env VSLERP_STATS)")
    p.add_argument("--reference", default=env("VSLERP_REFERENCE"),
                   help="open_clip reference space for extra readouts, open_clip:MODEL/PRETRAINED "
                        "(env VSLERP_REFERENCE)")
    p.add_argument("--reference-stats", default=env("VSLERP_REFERENCE_STATS"),
                   help="the reference space's image stats file (env VSLERP_REFERENCE_STATS)")
    p.add_argument("--device", default=env("VSLERP_DEVICE"), help="cuda, cpu, ... (default: CUDA if present)")
    p.add_argument("--dtype", default=env("VSLERP_DTYPE"), help="fp16, bf16, fp32 (default: fp16 on CUDA)")
    p.add_argument("--offload", action="store_true",
                   default=env("VSLERP_OFFLOAD", "").lower() in ("1", "true", "yes"),
                   help="small GPUs: weights in CPU memory, each model on the GPU only while it runs "
                        "(env VSLERP_OFFLOAD=1)")
    p.add_argument("--max-batch", type=int, default=int(env("VSLERP_MAX_BATCH", "8")),
                   help="most frames denoised at once (default: %(default)s)")
    p.add_argument("--host", default=None, help="interface to listen on (env GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=None, help="port (env GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--max-file-size", default=env("VSLERP_MAX_FILE_SIZE", "25mb"),
                   help="largest upload (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=int(env("VSLERP_QUEUE_SIZE", "16")),
                   help="most requests waiting for the GPU (default: %(default)s)")
    p.add_argument("--max-sequence-frames", type=int,
                   default=int(env("VSLERP_MAX_SEQUENCE_FRAMES", str(ui.MAX_SEQUENCE_FRAMES))),
                   help="most frames one sequence request may render (default: %(default)s, the "
                        "paper's 6 x 16 grid)")
    p.add_argument("--share", action="store_true", help="a public gradio.live link")
    args = p.parse_args(argv)
    if args.max_sequence_frames < 1:
        p.error(f"--max-sequence-frames must be at least 1, got {args.max_sequence_frames}")
    return args


# Command-line options only when run as a script; an importer (tests, `gradio app.py`)
# configures the app through the environment.
ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])


def _load_kwargs(args: argparse.Namespace) -> dict:
    return {"device": args.device, "dtype": args.dtype, "max_batch": args.max_batch, "offload": args.offload,
            "stats": args.stats, "reference": args.reference,
            "reference_stats": args.reference_stats}


try:
    PIPE = load_pipeline(ARGS.model, **_load_kwargs(ARGS))
except Exception as e:  # one clear line, no traceback, when started by hand
    if __name__ != "__main__":
        raise
    raise SystemExit(f"vSLERP Studio: cannot load model {ARGS.model!r}: {e}") from None

FULL = PIPE.default_settings(preview=False)
PREVIEW = PIPE.default_settings(preview=True)
IS_KARLO = PIPE.kind == "karlo"
MIN_STEPS = 2 if IS_KARLO else 1  # Karlo's scheduler needs two timesteps
HAS_STATS = PIPE.stats is not None


def gpu(duration: int):
    """`spaces.GPU(duration=...)` on ZeroGPU, a no-op elsewhere."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def _embed_pair(source, target, cached_source, cached_target):
    src = ui.embed_input(PIPE, source, "source image", cached_source)
    tgt = ui.embed_input(PIPE, target, "target image", cached_target)
    return src, tgt


@gpu(60)
def run_frame(source, target, cached_source, cached_target, theta, alpha, seed, kwargs):
    """Embed the inputs (reusing this session's entries) and render one frame."""
    src, tgt = _embed_pair(source, target, cached_source, cached_target)
    frames = PIPE.generate(src.embedding, tgt.embedding, [theta], [alpha], seed, **kwargs)
    return frames[0], src, tgt


@gpu(240)
def run_sequence(source, target, cached_source, cached_target, thetas, alphas, grid, seed, kwargs,
                 fps, out_dir, progress=None):
    """Embed the inputs and render a sequence with its files into out_dir (`vslerp render`'s code)."""
    src, tgt = _embed_pair(source, target, cached_source, cached_target)
    manifest = render_sequence(PIPE, src.embedding, tgt.embedding, thetas, alphas, seed, out_dir,
                               grid=grid, gif=True, mp4=True, zip=True, fps=fps, contact=False,
                               plot=True, progress=progress, **kwargs)
    return manifest, src, tgt


# -- error handling --------------------------------------------------------------------
def plain_errors(fn):
    """Every failure reaches the user as a gr.Error with a plain message, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(ui.user_message(e), print_exception=False) from None
    return wrapper


def checked_image(role: str, **kwargs) -> gr.Image:
    """An image input whose unreadable uploads become a plain gr.Error.

    The stock component opens the upload with Pillow while preprocessing; a text file or
    a broken header fails there and the user sees a bare "Error". The instance's
    preprocess is wrapped (a gr.Image subclass would make Gradio write a .pyi file
    beside this one).
    """
    image = gr.Image(**kwargs)
    stock = image.preprocess

    def preprocess(payload):
        try:
            return stock(payload)
        except gr.Error:
            raise
        except Exception:
            pass
        try:
            load_image(payload.path)
        except ImageInputError as e:
            raise gr.Error(f"The {role} {e.problem}.", print_exception=False) from None
        except Exception:
            pass
        raise gr.Error(f"The {role} could not be read as an image; use PNG, JPEG or WebP.",
                       print_exception=False)

    image.preprocess = preprocess
    return image


def named_range(component, name: str):
    """A number input whose refusals name the API parameter and its range.

    Gradio's own check says only "Value 1.5 is greater than maximum value 1." and lets NaN
    and missing values through to a bare error; here the instance's preprocess is wrapped,
    as in checked_image.
    """
    stock = component.preprocess
    lo, hi = component.minimum, component.maximum
    allowed = "a number" if lo is None and hi is None else (
        f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
        else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")

    def preprocess(payload):
        if payload is None and isinstance(component, gr.Number):
            return stock(payload)  # an emptied box: the handler decides (a seed of None is refused)
        if (isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload)
                or (lo is not None and payload < lo) or (hi is not None and payload > hi)):
            raise gr.Error(f"{name} must be {allowed}, got {payload!r}.", print_exception=False)
        return stock(payload)

    component.preprocess = preprocess
    return component


# -- handlers --------------------------------------------------------------------------
def _session(state) -> dict:
    return state if isinstance(state, dict) else {}


def _frame_request(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                   preview_steps, guidance_scale, max_batch):
    kwargs = ui.generate_kwargs(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch)
    pairs = [(_float(theta, "theta"), _float(alpha, "alpha"))]
    seed = ui.check_request(PIPE, source, target, pairs, seed, kwargs)
    return pairs, seed, kwargs


def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ui.RequestError(f"{name} must be a number, got {value!r}") from None


@plain_errors
def check_frame(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                preview_steps, guidance_scale, max_batch):
    """The gate before the queue: refuse what the engine would refuse, at once."""
    _frame_request(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                   preview_steps, guidance_scale, max_batch)


@plain_errors
def render_frame(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                 preview_steps, guidance_scale, max_batch, session):
    """One frame at (theta, alpha): the image and its readouts (JSON)."""
    pairs, seed, kwargs = _frame_request(source, target, theta, alpha, seed, quality, steps,
                                         super_res_steps, preview_steps, guidance_scale, max_batch)
    session = _session(session)
    start = time.perf_counter()
    frame, src, tgt = run_frame(source, target, session.get("source"), session.get("target"),
                                *pairs[0], seed, kwargs)
    readouts = ui.frame_readouts(frame, src, tgt, PIPE.model, time.perf_counter() - start)
    return frame.image, readouts, {"source": src, "target": tgt}


def _both_images(source, target) -> bool:
    return source is not None and target is not None


def slider_preview(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                   preview_steps, guidance_scale, max_batch, session):
    """Slider released: a fast preview (nothing to do until both images are there)."""
    if not _both_images(source, target):
        return gr.skip(), gr.skip(), gr.skip()
    return render_frame(source, target, theta, alpha, seed, "preview", steps, super_res_steps,
                        preview_steps, guidance_scale, max_batch, session)


def slider_full(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                preview_steps, guidance_scale, max_batch, session):
    """After the preview: the full frame, unless the quality setting is preview."""
    if not _both_images(source, target) or quality == "preview":
        return gr.skip(), gr.skip(), gr.skip()
    return render_frame(source, target, theta, alpha, seed, "full", steps, super_res_steps,
                        preview_steps, guidance_scale, max_batch, session)


def _sequence_request(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                      alpha_start, alpha_stop, alpha_frames, seed, quality, steps, super_res_steps,
                      preview_steps, guidance_scale, max_batch, fps):
    kwargs = ui.generate_kwargs(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch)
    thetas, alphas, grid = ui.sweep_values(
        sweep, _float(theta, "theta"), _float(alpha, "alpha"), _float(theta_start, "theta_start"),
        _float(theta_stop, "theta_stop"), theta_frames, _float(alpha_start, "alpha_start"),
        _float(alpha_stop, "alpha_stop"), alpha_frames)
    fps = _float(fps, "fps")  # its range: the fps slider's own, checked by named_range
    seed = ui.check_request(PIPE, source, target, ui.sweep_pairs(thetas, alphas, grid), seed, kwargs,
                            max_frames=ARGS.max_sequence_frames)
    return thetas, alphas, grid, seed, kwargs, fps


@plain_errors
def check_sequence(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                   alpha_start, alpha_stop, alpha_frames, seed, quality, steps, super_res_steps,
                   preview_steps, guidance_scale, max_batch, fps):
    _sequence_request(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                      alpha_start, alpha_stop, alpha_frames, seed, quality, steps, super_res_steps,
                      preview_steps, guidance_scale, max_batch, fps)


@plain_errors
def render_sweep(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                 alpha_start, alpha_stop, alpha_frames, seed, quality, steps, super_res_steps,
                 preview_steps, guidance_scale, max_batch, fps, session,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
    """A sweep of theta, alpha or both: gallery, conformity plot, MP4, GIF and ZIP (frames + manifest)."""
    thetas, alphas, grid, seed, kwargs, fps = _sequence_request(
        source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames, alpha_start,
        alpha_stop, alpha_frames, seed, quality, steps, super_res_steps, preview_steps,
        guidance_scale, max_batch, fps)
    session = _session(session)
    ui.cleanup_workdirs()
    out_dir = ui.new_workdir()
    n = len(thetas) * len(alphas) if grid else max(len(thetas), len(alphas))
    progress(0, desc=f"Rendering {n} frames")

    def report(done, total):
        progress((done, total), desc="Rendering frames", unit="frames")

    manifest, src, tgt = run_sequence(source, target, session.get("source"), session.get("target"),
                                      thetas, alphas, grid, seed, kwargs, fps, out_dir,
                                      None if spaces is not None else report)
    files = ui.sequence_outputs(manifest, out_dir)
    return (files["gallery"], files["plot"], files["mp4"], files["gif"], files["zip"],
            {"source": src, "target": tgt})


def gallery_columns(sweep, theta_frames, alpha_frames):
    """A grid shows one theta per row; a sweep up to 8 frames a row."""
    if sweep == "grid":
        return gr.Gallery(columns=int(alpha_frames))
    return gr.Gallery(columns=min(8, int(theta_frames if sweep == "theta" else alpha_frames)))


@plain_errors
def check_upload(image, role: str):
    """Decode an upload at once, so a broken file is reported when it arrives."""
    if image is None:
        return
    try:
        load_image(image)
    except ImageInputError as e:
        raise gr.Error(f"The {role} {e.problem}.", print_exception=False) from None


def swap_inputs(source, target, session):
    """Source becomes target and back; the session's embeddings follow their images."""
    session = _session(session)
    return target, source, {"source": session.get("target"), "target": session.get("source")}


def frame_as_source(frame):
    """Keep editing from here: the current frame becomes the source image."""
    if frame is None:
        raise gr.Error("There is no frame yet: generate one first.", print_exception=False)
    return frame


def new_seed() -> int:
    return random.randrange(2**32)


def show_readouts(readouts):
    return ui.readouts_markdown(readouts, PIPE.stats_note)


# -- layout ----------------------------------------------------------------------------
CSS = """
#frame-out img { object-fit: contain; }
#readout { min-height: 5em; }
"""

DEFAULTS = {"steps": FULL.steps, "guidance": FULL.guidance_scale, "preview steps": PREVIEW.steps}
if IS_KARLO:
    DEFAULTS["super-resolution steps"] = FULL.super_res_steps

EXAMPLES = [  # source, target, theta, alpha: alpha about the ellipsoid centre (paper: -2..2)
    ("chelsea.jpg", "astronaut.jpg", 0.5, 1.0, "cat -> astronaut, half way, alpha 1"),
    ("coffee.jpg", "rocket.jpg", 0.4, 2.0, "coffee -> rocket, alpha 2"),
    ("astronaut.jpg", "chelsea.jpg", 0.3, -1.0, "astronaut -> cat, alpha -1"),
    ("rocket.jpg", "coffee.jpg", 0.5, 0.0, "rocket -> coffee, plain SLERP"),
]

with gr.Blocks(title="vSLERP Studio", delete_cache=(1800, 3600), analytics_enabled=False) as demo:
    gr.Markdown(
        "# vSLERP Studio\n"
        "Edit an image by moving through CLIP's geometry: **theta** walks from the source (0) "
        "to the target (1); **alpha** moves the centre of rotation along the image-modality "
        "mean (0 is plain SLERP, 1 the ellipsoid centre; -2 to 2 works best). Each frame shows "
        "its *conformity* (how typical it is), beside the source's and the target's. "
        "Levi & Gilboa, *The Double-Ellipsoid Geometry of CLIP*, ICML 2025."
    )
    session = gr.State({})
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            with gr.Row():
                sources = ["upload", "clipboard", "webcam"]
                source = checked_image("source image", label="Source (theta = 0)", type="filepath",
                                       image_mode=None, sources=sources, height=260, elem_id="source")
                target = checked_image("target image", label="Target (theta = 1)", type="filepath",
                                       image_mode=None, sources=sources, height=260, elem_id="target")
            swap_button = gr.Button("⇄ Swap source and target", size="sm", elem_id="swap")
            theta = gr.Slider(0, 1, value=0.5, step=0.01, label="theta (source -> target)",
                              elem_id="theta")
            alpha = gr.Slider(-3, 3, value=1.0 if HAS_STATS else 0.0, step=0.05,
                              label="alpha (centre of rotation along the image mean)",
                              info=None if HAS_STATS else "no statistics for this model: only 0 works",
                              elem_id="alpha")
            with gr.Row():
                seed = gr.Number(value=42, precision=0, minimum=0, label="seed", elem_id="seed")
                random_seed_button = gr.Button("New seed", size="sm", scale=0, elem_id="random-seed")
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                quality = gr.Radio(["full", "preview"], value="full", label="quality",
                                   info="preview: a fast low-resolution frame; full: the finished frame",
                                   elem_id="quality")
                with gr.Row():
                    steps = gr.Slider(MIN_STEPS, 100, value=FULL.steps, step=1, label="steps (full frame)",
                                      elem_id="steps")
                    super_res_steps = gr.Slider(MIN_STEPS, 50, step=1,
                                                value=max(MIN_STEPS, FULL.super_res_steps),
                                                label="super-resolution steps", visible=IS_KARLO,
                                                elem_id="super_res_steps")
                    preview_steps = gr.Slider(MIN_STEPS, 50, value=PREVIEW.steps, step=1,
                                              label="steps (preview)", elem_id="preview_steps")
                with gr.Row():
                    guidance = gr.Slider(0, 20, value=FULL.guidance_scale, step=0.5,
                                         label="guidance scale (1 = off)", elem_id="guidance")
                    max_batch = gr.Slider(1, 32, value=PIPE.max_batch, step=1,
                                          label="batch limit (frames at once)", elem_id="max_batch")
            gr.Examples(
                examples=[[str(EXAMPLES_DIR / s), str(EXAMPLES_DIR / t), th, al if HAS_STATS else 0.0]
                          for s, t, th, al, _ in EXAMPLES],
                inputs=[source, target, theta, alpha],
                example_labels=[label for *_, label in EXAMPLES],
                label="Examples (public-domain photos from scikit-image; see examples/LICENSES.md)",
                cache_examples=False,
            )
        with gr.Column(scale=6):
            frame = gr.Image(label="Current frame", type="filepath", format="png", interactive=False,
                             height=480, elem_id="frame-out")
            use_frame_button = gr.Button("Use this frame as the source", size="sm", elem_id="use-frame")
            readout = gr.Markdown(ui.readouts_markdown(None), elem_id="readout")
            with gr.Accordion("Readouts (JSON)", open=False):
                readouts = gr.JSON(label="readouts", elem_id="readouts")

    with gr.Accordion("Sequence: sweep theta, alpha or both", open=True, elem_id="sequence"):
        with gr.Row():
            sweep = gr.Radio([("theta sweep (alpha fixed)", "theta"), ("alpha sweep (theta fixed)", "alpha"),
                              ("grid (a row per theta, a column per alpha)", "grid")], value="theta",
                             label="sweep", elem_id="sweep")
            fps = gr.Slider(0.5, 30, value=6, step=0.5, label="frames per second (GIF, MP4)", elem_id="fps")
        with gr.Row():
            theta_start = gr.Number(0.0, label="theta from", minimum=0, maximum=1, elem_id="theta_start")
            theta_stop = gr.Number(1.0, label="theta to", minimum=0, maximum=1, elem_id="theta_stop")
            theta_frames = gr.Slider(1, 32, value=8, step=1, label="theta frames", elem_id="theta_frames")
            alpha_start = gr.Number(-1.0, label="alpha from", elem_id="alpha_start")
            alpha_stop = gr.Number(2.0, label="alpha to", elem_id="alpha_stop")
            alpha_frames = gr.Slider(1, 32, value=6, step=1, label="alpha frames", elem_id="alpha_frames")
        sequence_button = gr.Button("Render sequence", variant="primary", elem_id="run-sequence")
        gallery = gr.Gallery(label="Frames", columns=8, height="auto", format="png", elem_id="gallery")
        with gr.Row():
            plot = gr.Image(label="Conformity plot", type="filepath", interactive=False, height=360,
                            elem_id="plot")
            video = gr.Video(label="MP4 video", interactive=False, height=360, elem_id="video")
        with gr.Row():
            gif_file = gr.File(label="GIF", interactive=False, height=110, elem_id="gif")
            zip_file = gr.File(label="ZIP", interactive=False, height=110, elem_id="zip")
        gr.Markdown(f"Up to {ARGS.max_sequence_frames} frames a sequence. The ZIP holds the frames "
                    "and `manifest.json` (theta, alpha, seed and readouts of every frame; the model, "
                    "its statistics and the settings), with the GIF, MP4 and plot.")

    with gr.Accordion("Model and statistics", open=False, elem_id="model-info"):
        gr.Markdown(ui.model_markdown(PIPE.info(), DEFAULTS))
        gr.JSON(ui.json_safe(PIPE.info()), label="details")

    # -- events ------------------------------------------------------------------------
    numbers = {"theta": theta, "alpha": alpha, "seed": seed, "steps": steps,
               "super_res_steps": super_res_steps, "preview_steps": preview_steps,
               "guidance_scale": guidance, "max_batch": max_batch, "fps": fps,
               "theta_start": theta_start, "theta_stop": theta_stop, "theta_frames": theta_frames,
               "alpha_start": alpha_start, "alpha_stop": alpha_stop, "alpha_frames": alpha_frames}
    for name, box in numbers.items():  # named as the API's parameters: a refusal says which value
        named_range(box, name)
    settings = [quality, steps, super_res_steps, preview_steps, guidance, max_batch]
    frame_inputs = [source, target, theta, alpha, seed, *settings]
    frame_outputs = [frame, readouts, session]
    sequence_inputs = [source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                       alpha_start, alpha_stop, alpha_frames, seed, *settings, fps]

    for box, role in ((source, "source image"), (target, "target image")):
        box.upload(functools.partial(check_upload, role=role), box, None, api_visibility="private",
                   concurrency_limit=4, concurrency_id="check-upload", show_progress="minimal")

    generate_button.click(check_frame, frame_inputs, None, queue=False, api_visibility="private").success(
        render_frame, [*frame_inputs, session], frame_outputs, api_name="preview",
        concurrency_id=GPU_QUEUE)

    for slider in (theta, alpha):
        slider.release(slider_preview, [*frame_inputs, session], frame_outputs, api_visibility="private",
                       trigger_mode="always_last", show_progress="minimal", concurrency_id=GPU_QUEUE
                       ).success(slider_full, [*frame_inputs, session], frame_outputs,
                                 api_visibility="private", show_progress="minimal",
                                 concurrency_id=GPU_QUEUE)

    swap_button.click(swap_inputs, [source, target, session], [source, target, session], queue=False,
                      api_visibility="private")
    random_seed_button.click(new_seed, None, seed, queue=False, api_visibility="private")
    use_frame_button.click(frame_as_source, frame, source, queue=False, api_visibility="private")
    readouts.change(show_readouts, readouts, readout, queue=False, api_visibility="private")

    sequence_button.click(check_sequence, sequence_inputs, None, queue=False,
                       api_visibility="private").success(
        render_sweep, [*sequence_inputs, session],
        [gallery, plot, video, gif_file, zip_file, session], api_name="sequence",
        concurrency_id=GPU_QUEUE).success(gallery_columns, [sweep, theta_frames, alpha_frames], gallery,
                                          queue=False, api_visibility="private")

demo.queue(default_concurrency_limit=1, max_size=ARGS.queue_size)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo.launch(
        server_name=ARGS.host,
        server_port=ARGS.port,
        share=ARGS.share,
        max_file_size=ARGS.max_file_size,
        allowed_paths=[],  # serve only uploads and what the app itself returns
        show_error=False,  # gr.Error messages only; unexpected errors stay in the server log
        css=CSS,
    )
