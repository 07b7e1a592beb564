"""vSLERP Studio in the browser: a Gradio app over the vSLERP engine.

    python app.py                      # the default model (karlo), from the Hugging Face hub
    python app.py --model DIR          # a local pipeline, e.g. a tiny fixture (`vslerp fixture karlo DIR`)
    VSLERP_MODEL=stable-unclip-l python app.py

Layout and wiring only: `build_demo(pipe, config)` lays out the page around a loaded
pipeline and wires its events to `vslerp_app.service.Studio`; `main()` parses the
arguments, loads the model once and launches (a Hugging Face Space runs this file).

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
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gradio as gr  # noqa: E402

from pipelines import DEFAULT_MODEL  # noqa: E402
from vslerp_app import load_pipeline  # noqa: E402
from vslerp_app import service as ui  # noqa: E402
from vslerp_app.images import ImageInputError, load_image  # noqa: E402

logger = logging.getLogger("vslerp_studio")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
GPU_QUEUE = "gpu"  # every event that runs the model shares this concurrency id: one GPU job at a time

CSS = """
#frame-out img { object-fit: contain; }
#readout { min-height: 5em; }
"""

EXAMPLES = [  # source, target, theta, alpha: alpha about the ellipsoid centre (paper: -2..2)
    ("chelsea.jpg", "astronaut.jpg", 0.5, 1.0, "cat -> astronaut, half way, alpha 1"),
    ("coffee.jpg", "rocket.jpg", 0.4, 2.0, "coffee -> rocket, alpha 2"),
    ("astronaut.jpg", "chelsea.jpg", 0.3, -1.0, "astronaut -> cat, alpha -1"),
    ("rocket.jpg", "coffee.jpg", 0.5, 0.0, "rocket -> coffee, plain SLERP"),
]


def gpu(duration: int):
    """`spaces.GPU(duration=...)` on ZeroGPU, a no-op elsewhere."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def on_zero_gpu() -> bool:
    """Whether `spaces.GPU` really hands the work to a ZeroGPU worker process.

    `spaces` is installed on other Spaces too (and in our tests), where its decorator
    does nothing: only ZeroGPU (SPACES_ZERO_GPU, read by `spaces` itself) changes how
    the decorated functions run.
    """
    return spaces is not None and bool(spaces.config.Config.zero_gpu)


# -- Gradio's side of errors -----------------------------------------------------------
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


# -- layout ----------------------------------------------------------------------------
def _input_column(pipe, c: SimpleNamespace) -> None:
    full, preview = pipe.default_settings(preview=False), pipe.default_settings(preview=True)
    is_karlo, has_stats = pipe.kind == "karlo", pipe.stats is not None
    min_steps = pipe.runner.min_steps
    with gr.Row():
        sources = ["upload", "clipboard", "webcam"]
        c.source = checked_image("source image", label="Source (theta = 0)", type="filepath",
                                 image_mode=None, sources=sources, height=260, elem_id="source")
        c.target = checked_image("target image", label="Target (theta = 1)", type="filepath",
                                 image_mode=None, sources=sources, height=260, elem_id="target")
    c.swap_button = gr.Button("⇄ Swap source and target", size="sm", elem_id="swap")
    c.theta = gr.Slider(0, 1, value=0.5, step=0.01, label="theta (source -> target)", elem_id="theta")
    c.alpha = gr.Slider(-3, 3, value=1.0 if has_stats else 0.0, step=0.05,
                        label="alpha (centre of rotation along the image mean)",
                        info=None if has_stats else "no statistics for this model: only 0 works",
                        elem_id="alpha")
    _aim_controls(has_stats, c)
    with gr.Row():
        c.seed = gr.Number(value=42, precision=0, minimum=0, label="seed", elem_id="seed")
        c.random_seed_button = gr.Button("New seed", size="sm", scale=0, elem_id="random-seed")
        c.generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
        c.quality = gr.Radio(["full", "preview"], value="full", label="quality",
                             info="preview: a fast low-resolution frame; full: the finished frame",
                             elem_id="quality")
        with gr.Row():
            c.steps = gr.Slider(min_steps, 100, value=full.steps, step=1, label="steps (full frame)",
                                elem_id="steps")
            c.super_res_steps = gr.Slider(min_steps, 50, step=1, value=max(min_steps, full.super_res_steps),
                                          label="super-resolution steps", visible=is_karlo,
                                          elem_id="super_res_steps")
            c.preview_steps = gr.Slider(min_steps, 50, value=preview.steps, step=1, label="steps (preview)",
                                        elem_id="preview_steps")
        with gr.Row():
            c.guidance = gr.Slider(0, 20, value=full.guidance_scale, step=0.5,
                                   label="guidance scale (1 = off)", elem_id="guidance")
            c.max_batch = gr.Slider(1, 32, value=pipe.max_batch, step=1,
                                    label="batch limit (frames at once)", elem_id="max_batch")
    gr.Examples(
        examples=[[str(EXAMPLES_DIR / s), str(EXAMPLES_DIR / t), th, al if has_stats else 0.0]
                  for s, t, th, al, _ in EXAMPLES],
        inputs=[c.source, c.target, c.theta, c.alpha],
        example_labels=[label for *_, label in EXAMPLES],
        label="Examples (public-domain photos from scikit-image; see examples/LICENSES.md)",
        cache_examples=False,
    )


def _aim_controls(has_stats: bool, c: SimpleNamespace) -> None:
    """A target conformity beside alpha: *Aim* sets alpha to the one nearest 0 that gives it."""
    with gr.Row(equal_height=True):
        c.target_conformity = gr.Number(
            None, label="target conformity", interactive=has_stats, scale=3,
            info="Aim sets alpha to give the frame's embedding this conformity" if has_stats
            else "needs statistics for this model", elem_id="target_conformity")
        c.aim_button = gr.Button("Aim alpha", size="sm", scale=1, interactive=has_stats, elem_id="aim")
    c.aim_note = gr.Markdown("", elem_id="aim-note")
    # The API's target_conformity of /preview and /sequence (None: not aiming). The page's own
    # Generate and Render buttons leave it empty: there, Aim sets the alpha slider instead.
    c.api_target_conformity = gr.Number(None, visible=False, label="target_conformity")


def _frame_column(c: SimpleNamespace) -> None:
    c.frame = gr.Image(label="Current frame", type="filepath", format="png", interactive=False,
                       height=480, elem_id="frame-out")
    c.use_frame_button = gr.Button("Use this frame as the source", size="sm", elem_id="use-frame")
    c.readout = gr.Markdown(ui.readouts_markdown(None), elem_id="readout")
    with gr.Accordion("Readouts (JSON)", open=False):
        c.readouts = gr.JSON(label="readouts", elem_id="readouts")


def _sequence_panel(config: ui.StudioConfig, c: SimpleNamespace) -> None:
    with gr.Accordion("Sequence: sweep theta, alpha or both", open=True, elem_id="sequence"):
        with gr.Row():
            c.sweep = gr.Radio([("theta sweep (alpha fixed)", "theta"),
                                ("alpha sweep (theta fixed)", "alpha"),
                                ("grid (a row per theta, a column per alpha)", "grid")],
                               value="theta", label="sweep", elem_id="sweep")
            c.fps = gr.Slider(0.5, 30, value=6, step=0.5, label="frames per second (GIF, MP4)", elem_id="fps")
        with gr.Row():
            c.theta_start = gr.Number(0.0, label="theta from", minimum=0, maximum=1, elem_id="theta_start")
            c.theta_stop = gr.Number(1.0, label="theta to", minimum=0, maximum=1, elem_id="theta_stop")
            c.theta_frames = gr.Slider(1, 32, value=8, step=1, label="theta frames", elem_id="theta_frames")
            c.alpha_start = gr.Number(-1.0, label="alpha from", elem_id="alpha_start")
            c.alpha_stop = gr.Number(2.0, label="alpha to", elem_id="alpha_stop")
            c.alpha_frames = gr.Slider(1, 32, value=6, step=1, label="alpha frames", elem_id="alpha_frames")
        c.sequence_button = gr.Button("Render sequence", variant="primary", elem_id="run-sequence")
        c.gallery = gr.Gallery(label="Frames", columns=8, height="auto", format="png", elem_id="gallery")
        with gr.Row():
            c.plot = gr.Image(label="Conformity plot", type="filepath", interactive=False, height=360,
                              elem_id="plot")
            c.video = gr.Video(label="MP4 video", interactive=False, height=360, elem_id="video")
        with gr.Row():
            c.gif_file = gr.File(label="GIF", interactive=False, height=110, elem_id="gif")
            c.zip_file = gr.File(label="ZIP", interactive=False, height=110, elem_id="zip")
        gr.Markdown(f"Up to {config.max_sequence_frames} frames a sequence. The ZIP holds the frames "
                    "and `manifest.json` (theta, alpha, seed and readouts of every frame; the model, "
                    "its statistics and the settings), with the GIF, MP4 and plot.")


def _model_panel(pipe) -> None:
    full, preview = pipe.default_settings(preview=False), pipe.default_settings(preview=True)
    defaults = {"steps": full.steps, "guidance": full.guidance_scale, "preview steps": preview.steps}
    if pipe.kind == "karlo":
        defaults["super-resolution steps"] = full.super_res_steps
    with gr.Accordion("Model and statistics", open=False, elem_id="model-info"):
        gr.Markdown(ui.model_markdown(pipe.info(), defaults))
        gr.JSON(ui.json_safe(pipe.info()), label="details")


# -- events ------------------------------------------------------------------------------
def _name_the_numbers(c: SimpleNamespace) -> None:
    """Refusals of number inputs name the API parameter (a refusal says which value)."""
    for name in ("theta", "alpha", "seed", "steps", "super_res_steps", "preview_steps", "max_batch",
                 "fps", "theta_start", "theta_stop", "theta_frames", "alpha_start", "alpha_stop",
                 "alpha_frames"):
        named_range(getattr(c, name), name)
    named_range(c.guidance, "guidance_scale")


def _handlers(studio: ui.Studio) -> SimpleNamespace:
    """The event functions, each turning any failure into a plain gr.Error."""

    def check_frame(*request):  # the gate before the queue: refuse at once what would fail
        studio.frame_request(*request)

    # The public endpoints spell out their parameters: Gradio names the API's after them.
    def render_frame(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                     preview_steps, guidance_scale, max_batch, session, target_conformity=None):
        """/preview: one frame at (theta, alpha), its image and readouts; with a
        target_conformity, at the alpha giving it (readouts["aim"]: wanted, achieved)."""
        return studio.frame(session, source, target, theta, alpha, seed, quality, steps,
                            super_res_steps, preview_steps, guidance_scale, max_batch, target_conformity)

    def slider(quality_wanted):
        def handler(*inputs):
            *request, session = inputs
            source, target, quality = request[0], request[1], request[5]
            if source is None or target is None or (quality_wanted == "full" and quality == "preview"):
                return gr.skip(), gr.skip(), gr.skip()
            request[5] = quality_wanted
            return studio.frame(session, *request)
        return handler

    def check_sequence(*request):
        studio.sequence_request(*request)

    def render_sweep(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                     alpha_start, alpha_stop, alpha_frames, seed, quality, steps, super_res_steps,
                     preview_steps, guidance_scale, max_batch, fps, session, target_conformity=None,
                     progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        """/sequence: a sweep of theta, alpha or both: gallery, plot, MP4, GIF and ZIP; with a
        target_conformity (theta sweep), every frame's alpha gives it."""
        progress(0, desc="Rendering frames")

        def report(done, total):
            progress((done, total), desc="Rendering frames", unit="frames")

        return studio.sequence(session, source, target, sweep, theta, alpha, theta_start, theta_stop,
                               theta_frames, alpha_start, alpha_stop, alpha_frames, seed, quality, steps,
                               super_res_steps, preview_steps, guidance_scale, max_batch, fps,
                               target_conformity,
                               # ZeroGPU pickles the arguments to its worker: a closure cannot go.
                               progress=None if on_zero_gpu() else report)

    def check_upload(image, role: str):
        """Decode an upload at once, so a broken file is reported when it arrives."""
        if image is not None:
            try:
                load_image(image)
            except ImageInputError as e:
                raise gr.Error(f"The {role} {e.problem}.", print_exception=False) from None

    return SimpleNamespace(**{name: plain_errors(fn) for name, fn in {
        "check_frame": check_frame, "render_frame": render_frame, "slider_preview": slider("preview"),
        "slider_full": slider("full"), "check_sequence": check_sequence, "render_sweep": render_sweep,
        "check_upload": check_upload}.items()})


def _swap_inputs(source, target, session):
    """Source becomes target and back; the session's embeddings follow their images."""
    session = session if isinstance(session, dict) else {}
    return target, source, {"source": session.get("target"), "target": session.get("source")}


def _frame_as_source(frame):
    """Keep editing from here: the current frame becomes the source image."""
    if frame is None:
        raise gr.Error("There is no frame yet: generate one first.", print_exception=False)
    return frame


def _gallery_columns(sweep, theta_frames, alpha_frames):
    """A grid shows one theta per row; a sweep up to 8 frames a row."""
    if sweep == "grid":
        return gr.Gallery(columns=int(alpha_frames))
    return gr.Gallery(columns=min(8, int(theta_frames if sweep == "theta" else alpha_frames)))


def _wire(studio: ui.Studio, c: SimpleNamespace, session) -> None:
    h = _handlers(studio)
    _name_the_numbers(c)
    settings = [c.quality, c.steps, c.super_res_steps, c.preview_steps, c.guidance, c.max_batch]
    frame_inputs = [c.source, c.target, c.theta, c.alpha, c.seed, *settings]
    frame_outputs = [c.frame, c.readouts, session]
    sequence_inputs = [c.source, c.target, c.sweep, c.theta, c.alpha, c.theta_start, c.theta_stop,
                       c.theta_frames, c.alpha_start, c.alpha_stop, c.alpha_frames, c.seed, *settings, c.fps]
    private = {"api_visibility": "private"}

    for box, role in ((c.source, "source image"), (c.target, "target image")):
        box.upload(functools.partial(h.check_upload, role=role), box, None, concurrency_limit=4,
                   concurrency_id="check-upload", show_progress="minimal", **private)
    c.generate_button.click(h.check_frame, frame_inputs, None, queue=False, **private).success(
        h.render_frame, [*frame_inputs, session, c.api_target_conformity], frame_outputs, api_name="preview",
        concurrency_id=GPU_QUEUE)
    for slider in (c.theta, c.alpha):
        slider.release(h.slider_preview, [*frame_inputs, session], frame_outputs, trigger_mode="always_last",
                       show_progress="minimal", concurrency_id=GPU_QUEUE, **private).success(
            h.slider_full, [*frame_inputs, session], frame_outputs, show_progress="minimal",
            concurrency_id=GPU_QUEUE, **private)
    c.swap_button.click(_swap_inputs, [c.source, c.target, session], [c.source, c.target, session],
                        queue=False, **private)
    c.random_seed_button.click(lambda: random.randrange(2**32), None, c.seed, queue=False, **private)
    c.use_frame_button.click(_frame_as_source, c.frame, c.source, queue=False, **private)
    c.readouts.change(lambda r: ui.readouts_markdown(r, studio.pipe.stats_note), c.readouts, c.readout,
                      queue=False, **private)
    c.sequence_button.click(h.check_sequence, sequence_inputs, None, queue=False, **private).success(
        h.render_sweep, [*sequence_inputs, session, c.api_target_conformity],
        [c.gallery, c.plot, c.video, c.gif_file, c.zip_file, session],
        api_name="sequence", concurrency_id=GPU_QUEUE).success(
        _gallery_columns, [c.sweep, c.theta_frames, c.alpha_frames], c.gallery, queue=False, **private)
    _wire_aim(studio, c, session, frame_inputs, frame_outputs)


def _aim_handlers(studio: ui.Studio) -> SimpleNamespace:
    """Aim: a frame rendered at the alpha giving the target conformity (found inside the frame's
    GPU call), then the slider set to that alpha, then the full frame."""

    def check(*inputs):
        *request, _session, target_conformity = inputs
        studio.aim_request(*request, target_conformity)

    def aimed(quality_wanted):
        def handler(*inputs):
            *request, session, target_conformity = inputs
            if quality_wanted == "full" and request[5] == "preview":
                return gr.skip(), gr.skip(), gr.skip()
            request[5] = quality_wanted
            return studio.frame(session, *request, target_conformity)
        return handler

    return SimpleNamespace(check=plain_errors(check), preview=plain_errors(aimed("preview")),
                           full=plain_errors(aimed("full")), show=plain_errors(ui.aimed_alpha))


def _wire_aim(studio: ui.Studio, c: SimpleNamespace, session, frame_inputs, frame_outputs) -> None:
    """Aim: the frame renders at the aimed alpha (preview), the alpha slider moves there, then the
    full frame follows."""
    h = _aim_handlers(studio)
    private = {"api_visibility": "private"}
    named_range(c.target_conformity, "target conformity")
    named_range(c.api_target_conformity, "target_conformity")
    inputs = [*frame_inputs, session, c.target_conformity]
    on_gpu = {"show_progress": "minimal", "concurrency_id": GPU_QUEUE, **private}
    # Queued (cheap, its own queue): an unqueued event's gr.Error never reaches the page.
    c.aim_button.click(h.check, inputs, None, concurrency_limit=4, concurrency_id="check-aim",
                       show_progress="hidden", **private).success(
        h.preview, inputs, frame_outputs, **on_gpu).success(
        h.show, c.readouts, [c.alpha, c.aim_note], queue=False, **private).success(
        h.full, inputs, frame_outputs, **on_gpu)


def build_demo(pipe, config: ui.StudioConfig | None = None) -> gr.Blocks:
    """The studio's page around a loaded pipeline (`vslerp_app.load_pipeline`), queue set up.

    Launch it with `demo.launch(max_file_size=config.max_file_size, css=CSS, ...)`, as `main` does.
    """
    config = config or ui.StudioConfig()
    studio = ui.Studio(pipe, config, gpu=gpu)
    c = SimpleNamespace()
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
                _input_column(pipe, c)
            with gr.Column(scale=6):
                _frame_column(c)
        _sequence_panel(config, c)
        _model_panel(pipe)
        _wire(studio, c, session)
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
    return demo


# -- command line ----------------------------------------------------------------------
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


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, load the model once, build the page and serve it."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, stats=args.stats,
                             offload=args.offload, max_batch=args.max_batch, reference=args.reference,
                             reference_stats=args.reference_stats)
    except Exception as e:  # one clear line, no traceback
        raise SystemExit(f"vSLERP Studio: cannot load model {args.model!r}: {e}") from None
    config = ui.StudioConfig(max_sequence_frames=args.max_sequence_frames, queue_size=args.queue_size,
                             max_file_size=args.max_file_size)
    build_demo(pipe, config).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=config.max_file_size,
        allowed_paths=[],  # serve only uploads and what the app itself returns
        show_error=False,  # gr.Error messages only; unexpected errors stay in the server log
        css=CSS,
    )


if __name__ == "__main__":
    main()
