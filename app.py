"""vSLERP Studio in the browser: a Gradio app over the vSLERP engine.

    python app.py                      # the default model (karlo), from the Hugging Face hub
    python app.py --model DIR          # a local pipeline, e.g. a tiny fixture (`vslerp fixture karlo DIR`)
    VSLERP_MODEL=stable-unclip-l python app.py

Layout and wiring only: `build_demo(pipe, config)` lays out the page around a loaded
pipeline and wires its events to `vslerp_app.service.Studio`; `main()` parses the
arguments, loads the model once and launches (a Hugging Face Space runs this file).

Named API endpoints for `gradio_client`: `/preview` (one frame at theta, alpha: the image
and its readouts), `/sequence` (a sweep: gallery, conformity plot, MP4, GIF, ZIP) and `/path`
(a path through 2 to 8 keyframes, open or looped: the same five outputs).
"""

from __future__ import annotations

# ZeroGPU (Hugging Face Spaces) wants `spaces` imported before anything touches CUDA.
try:
    import spaces
except ImportError:  # everywhere else: the decorator is a no-op
    spaces = None

import argparse  # noqa: E402
import functools  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gradio as gr  # noqa: E402

import gate  # noqa: E402
import gradio_patches  # noqa: E402
from gate import checked_image  # noqa: E402
from pipelines import DEFAULT_MAX_BATCH, DEFAULT_MODEL, HubUnreachableError  # noqa: E402
from vslerp_app import load_pipeline  # noqa: E402
from vslerp_app import service as ui  # noqa: E402
from vslerp_app.images import ImageInputError, load_image  # noqa: E402

logger = logging.getLogger("vslerp_studio")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
PATH_COLUMNS = 6  # a path frame's caption (1→2 θ α C) is longer than a sweep's and must fit
GPU_QUEUE = "gpu"  # every event that runs the model shares this concurrency id: one GPU job at a time
CHECK_QUEUE = "check"  # the pre-checks: header reads only, never a decode
UPLOAD_FILES = 8  # most files one upload request may hold (the page sends one at a time)

CSS = """
#frame-out img { object-fit: contain; }
#readout { min-height: 5em; }
/* The keyframe strip: every keyframe whole, the selected one outlined. */
#keyframes .thumbnail-item { aspect-ratio: 1 / 1; height: auto; }
#keyframes .thumbnail-item img { object-fit: contain; }
#keyframes .thumbnail-item.selected { outline: 4px solid var(--color-accent); outline-offset: -4px; }
/* Frame galleries (fit_columns=False keeps two frames after a Stop frame-sized): no empty
   band below them, and captions that wrap instead of hiding the conformity behind "...". */
#gallery .grid-wrap.fixed-height, #path-gallery .grid-wrap.fixed-height { min-height: 0; }
#gallery .caption-label, #path-gallery .caption-label {
  white-space: normal; overflow-wrap: anywhere; max-width: 100%;
}
/* A render's status line: room for Gradio's progress bar and its text. */
#sequence-status, #path-status { min-height: 3.2em; }
#keyframes .grid-wrap.fixed-height { min-height: 0; }
/* The conformity plots: never wider than drawn (their labels are sized for that), as wide as
   the page allows below it. */
#plot img, #path-plot img { max-width: 100%; width: auto; height: auto; }
#plot .image-container, #path-plot .image-container { height: auto; }
/* Phones keep the sliders' min and max labels (Gradio hides them below 480 px). */
@media (max-width: 480px) {
  .min_value, .max_value { display: inline !important; }
}
/* Phones: frame galleries of two columns, the keyframe strip of four. */
@media (max-width: 640px) {
  #gallery .grid-container, #path-gallery .grid-container {
    grid-template-columns: repeat(2, minmax(0, 1fr)) !important;
  }
  #keyframes .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
}
"""

# After Generate, the frame comes into view (on a phone it sits below the inputs).
SCROLL_TO_FRAME = """() => {
  const frame = document.getElementById("frame-out");
  const box = frame && frame.getBoundingClientRect();
  if (box && (box.top < 0 || box.bottom > window.innerHeight)) frame.scrollIntoView({block: "start"});
}"""

OFFLINE_HINT = """Without the hub, try the studio on a tiny random-weight model (its frames are noise):
    vslerp fixture karlo /tmp/tiny-karlo
    python app.py --model /tmp/tiny-karlo
or pass a downloaded copy of the model: python app.py --model DIR"""

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
def _plain(e: BaseException) -> gr.Error:
    return e if isinstance(e, gr.Error) else gr.Error(ui.user_message(e), print_exception=False)


def plain_errors(fn):
    """Every failure reaches the user as a gr.Error with a plain message, never a traceback.

    Generator functions (streamed events) stay generator functions, as Gradio requires.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def streamed(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _plain(e) from None
        return streamed

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _plain(e) from None
    return wrapper


def named_range(component, name: str):
    """A number input whose refusals name the API parameter and its range.

    Gradio's own check says only "Value 1.5 is greater than maximum value 1." and lets NaN
    and missing values through to a bare error; here the instance's preprocess is wrapped
    (`gradio_patches.replace_preprocess`), as in checked_image. An emptied number box arrives
    as None for its handler to judge; a slider sent as null (raw HTTP) takes its default, as
    gradio_client fills it in.
    """
    stock = component.preprocess
    lo, hi = component.minimum, component.maximum
    allowed = "a number" if lo is None and hi is None else (
        f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
        else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")

    def preprocess(payload):
        if payload is None and isinstance(component, gr.Number):
            return stock(payload)  # an emptied box: the handler decides (a seed of None is refused)
        if payload is None:  # a slider sent as null (raw HTTP): its default, as gradio_client sends
            payload = component.value
        if (isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload)
                or (lo is not None and payload < lo) or (hi is not None and payload > hi)):
            raise gr.Error(f"{name} must be {allowed}, got {payload!r}.", print_exception=False)
        return stock(payload)

    gradio_patches.replace_preprocess(component, preprocess)
    return component


# -- layout ----------------------------------------------------------------------------
def _input_column(engine, c: SimpleNamespace) -> None:
    full, preview = engine.default_settings(preview=False), engine.default_settings(preview=True)
    is_karlo, has_stats = engine.kind == "karlo", engine.stats is not None
    min_steps = engine.min_steps
    with gr.Row():
        sources = ["upload", "clipboard", "webcam"]
        max_bytes = c.config.max_file_bytes
        c.source = checked_image("source image", max_bytes, label="Source (theta = 0)", type="filepath",
                                 image_mode=None, sources=sources, height=260, elem_id="source")
        c.target = checked_image("target image", max_bytes, label="Target (theta = 1)", type="filepath",
                                 image_mode=None, sources=sources, height=260, elem_id="target")
    c.swap_button = gr.Button("⇄ Swap source and target", size="sm", elem_id="swap")
    c.theta = gr.Slider(0, 1, value=0.5, step=0.01, label="theta (source -> target)", elem_id="theta")
    c.alpha = gr.Slider(*ui.STUDIO_ALPHA_RANGE, value=1.0 if has_stats else 0.0, step=0.05,
                        label="alpha (centre of rotation along the image mean)",
                        info=None if has_stats else "no statistics for this model: only 0 works",
                        elem_id="alpha")
    _aim_controls(has_stats, c)
    with gr.Row():
        # No precision=0: Gradio would round 1.5 to 2 without a word; a fraction is refused instead.
        # On a phone the seed and New seed share a line and Generate takes the next one whole.
        c.seed = gr.Number(value=42, minimum=0, label="seed", min_width=110, elem_id="seed")
        c.random_seed_button = gr.Button("New seed", size="sm", scale=0, min_width=90, elem_id="random-seed")
        c.generate_button = gr.Button("Generate", variant="primary", min_width=180, elem_id="generate")
    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
        c.quality = gr.Radio(["full", "preview"], value="full", label="quality",
                             info="preview: a fast low-resolution frame; full: the finished frame",
                             elem_id="quality")
        with gr.Row():
            c.steps = gr.Slider(min_steps, 100, value=full.steps, step=1, label="steps",
                                elem_id="steps")
            c.super_res_steps = gr.Slider(min_steps, 50, step=1, value=max(min_steps, full.super_res_steps),
                                          label="super-resolution steps", visible=is_karlo,
                                          elem_id="super_res_steps")
            c.preview_steps = gr.Slider(min_steps, 50, value=preview.steps, step=1, label="preview steps",
                                        elem_id="preview_steps")
        with gr.Row():
            c.guidance = gr.Slider(0, 20, value=full.guidance_scale, step=0.5,
                                   label="guidance scale (1 = off)", elem_id="guidance")
            c.max_batch = gr.Slider(1, 32, value=engine.max_batch, step=1,
                                    label="batch limit (frames at once)", elem_id="max_batch")
        c.strength = gr.Slider(0.05, 1, value=1.0, step=0.05, visible=engine.takes_strength,
                               label="strength (1: from noise; lower keeps the source's layout)",
                               elem_id="strength")
        with gr.Row(visible=engine.kind == "ip-adapter"):  # IP-Adapter's own settings
            c.adapter_scale = gr.Slider(
                0, 2, value=full.adapter_scale, step=0.05, elem_id="adapter_scale",
                label="adapter scale (how strongly the image steers; 1: the image alone)")
            c.prompt = gr.Textbox(value=full.prompt, max_lines=2, elem_id="prompt",
                                  label="prompt (text steering every frame; may stay empty)")
    c.examples = gr.Examples(
        examples=[[str(EXAMPLES_DIR / s), str(EXAMPLES_DIR / t), th, al if has_stats else 0.0]
                  for s, t, th, al, _ in EXAMPLES],
        inputs=[c.source, c.target, c.theta, c.alpha],
        example_labels=[label for *_, label in EXAMPLES],
        label="Examples: a click renders one (public-domain photos from scikit-image; examples/LICENSES.md)",
        cache_examples=False,
    )


def _aim_controls(has_stats: bool, c: SimpleNamespace) -> None:
    """A target conformity beside alpha: *Aim* sets alpha to the one nearest 0 that gives it."""
    with gr.Row(equal_height=True):
        # A text box: Gradio's number box shows (and sends) 0 when empty, and 0 is a conformity.
        c.target_conformity = gr.Textbox(
            "", label="target conformity", placeholder="e.g. 0.8", max_lines=1, interactive=has_stats,
            scale=3,
            info="Aim sets alpha to give the frame's embedding this conformity" if has_stats
            else "needs statistics for this model", elem_id="target_conformity")
        c.aim_button = gr.Button("Aim alpha", size="sm", scale=1, interactive=has_stats, elem_id="aim")
    c.aim_note = gr.Markdown("", elem_id="aim-note")
    # The API's target_conformity of /preview and /sequence (None: not aiming). The page's own
    # Generate and Render buttons leave it empty: there, Aim sets the alpha slider instead.
    c.api_target_conformity = gr.Number(None, minimum=-1, maximum=1, visible=False, label="target_conformity")


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
            c.fps = gr.Slider(0.5, 30, value=ui.DEFAULT_FPS, step=0.5, label="frames per second (GIF, MP4)",
                              elem_id="fps")
        with gr.Row():
            c.theta_start = gr.Number(0.0, label="theta from", minimum=0, maximum=1, elem_id="theta_start")
            c.theta_stop = gr.Number(1.0, label="theta to", minimum=0, maximum=1, elem_id="theta_stop")
            c.theta_frames = gr.Slider(1, 32, value=8, step=1, label="theta frames", elem_id="theta_frames")
            # No bounds here: a theta sweep leaves them unused; the request checks them by name.
            c.alpha_start = gr.Number(-1.0, label="alpha from", elem_id="alpha_start")
            c.alpha_stop = gr.Number(2.0, label="alpha to", elem_id="alpha_stop")
            c.alpha_frames = gr.Slider(1, 32, value=6, step=1, label="alpha frames", elem_id="alpha_frames")
        with gr.Row():
            c.sequence_button = gr.Button("Render sequence", variant="primary", scale=3,
                                          elem_id="run-sequence")
            c.stop_button = gr.Button("Stop", variant="stop", scale=1, elem_id="stop-sequence")
        c.sequence_status = gr.Markdown("", visible=False, elem_id="sequence-status")  # shown by a render
        # Output boxes appear when there is output (the page handler shows them).
        c.gallery = gr.Gallery(label="Frames", columns=8, fit_columns=False, height="auto", format="png",
                               visible=False, elem_id="gallery")
        c.smoothness = gr.Markdown(visible=False, elem_id="smoothness")  # how evenly the sequence moves
        _file_outputs(c, "plot", "video", "gif_file", "zip_file", "Conformity plot", "")
        gr.Markdown(f"Up to {config.max_sequence_frames} frames a sequence; each batch appears as it is "
                    "rendered, and *Stop* keeps the frames already shown. Captions: theta (θ), alpha (α) "
                    "and the frame's conformity C (how typical it is; higher is more typical). The plot "
                    "marks the source's and the target's conformity. The ZIP holds the frames and "
                    "`manifest.json` (theta, alpha, seed and readouts of every frame; the model, its "
                    "statistics and the settings), with the GIF, MP4 and plot.")


def _file_outputs(c: SimpleNamespace, plot: str, video: str, gif: str, zip_file: str, plot_label: str,
                  prefix: str) -> None:
    """A render's plot (full width: its labels must be readable), MP4, GIF and ZIP; hidden until
    a render has them."""
    # No label badge: it would sit on the figure's title (which names the model, seed and readout).
    setattr(c, plot, gr.Image(label=plot_label, show_label=False, type="filepath", interactive=False,
                              visible=False, elem_id=f"{prefix}plot"))
    with gr.Row(equal_height=False):
        setattr(c, video, gr.Video(label="MP4 video", interactive=False, height=360, visible=False,
                                   scale=2, elem_id=f"{prefix}video"))
        with gr.Column(scale=1, min_width=200):
            setattr(c, gif, gr.File(label="GIF", interactive=False, height=110, visible=False,
                                    elem_id=f"{prefix}gif"))
            setattr(c, zip_file, gr.File(label="ZIP", interactive=False, height=110, visible=False,
                                         elem_id=f"{prefix}zip"))


def _path_panel(config: ui.StudioConfig, c: SimpleNamespace, has_stats: bool) -> None:
    """Keyframes in a strip (add, reorder, remove), the path's shape, its frames and files."""
    with gr.Accordion("Path: through several keyframes, open or looped", open=False, elem_id="path"):
        with gr.Row(equal_height=True):
            c.keyframe_add = checked_image("keyframe", config.max_file_bytes, label="Add a keyframe",
                                           type="filepath", image_mode=None, height=170, scale=2,
                                           sources=["upload", "clipboard", "webcam"], elem_id="keyframe-add")
            with gr.Column(scale=1, min_width=160):
                c.add_source_button = gr.Button("+ source image", size="sm", elem_id="add-source")
                c.add_target_button = gr.Button("+ target image", size="sm", elem_id="add-target")
                c.add_frame_button = gr.Button("+ current frame", size="sm", elem_id="add-frame")
        c.keyframes = gr.Gallery(label=f"Keyframes, in order (up to {ui.MAX_KEYFRAMES}): click one to move "
                                 "or remove it", columns=ui.MAX_KEYFRAMES, fit_columns=False, height="auto",
                                 allow_preview=False,
                                 interactive=False, type="filepath", elem_id="keyframes")
        c.keyframe_selected = gr.State(None)
        with gr.Row():
            c.earlier_button = gr.Button("◀ earlier", size="sm", elem_id="keyframe-earlier")
            c.later_button = gr.Button("later ▶", size="sm", elem_id="keyframe-later")
            c.remove_button = gr.Button("remove", size="sm", elem_id="keyframe-remove")
            c.clear_button = gr.Button("clear", size="sm", elem_id="keyframe-clear")
        with gr.Row():
            c.path_frames = gr.Slider(2, config.max_sequence_frames, step=1, label="path frames",
                                      value=min(17, config.max_sequence_frames),
                                      info="open: both ends included; loop: the first frame is not repeated",
                                      elem_id="path_frames")
            c.path_alpha = gr.Textbox("1" if has_stats else "0", label="alpha", max_lines=1,
                                      info="one value for every segment, or one per segment: 0, 1, 2",
                                      elem_id="path_alpha")
        with gr.Row():
            c.loop = gr.Checkbox(False, label="loop back to the first keyframe", elem_id="loop")
            c.spacing = gr.Radio([("same frames per segment", "uniform"), ("one speed (by angle)", "angle"),
                                  ("even as measured (a preview pass first)", "perceptual")],
                                 value="uniform", label="spacing", elem_id="spacing")
            c.ease = gr.Checkbox(False, label="ease in and out of each keyframe", elem_id="ease")
        with gr.Row():
            c.path_button = gr.Button("Render path", variant="primary", scale=3, elem_id="run-path")
            c.path_stop_button = gr.Button("Stop", variant="stop", scale=1, elem_id="stop-path")
        c.path_status = gr.Markdown("", visible=False, elem_id="path-status")  # shown by a render
        c.path_gallery = gr.Gallery(label="Path frames", columns=PATH_COLUMNS, fit_columns=False,
                                    height="auto", format="png", visible=False, elem_id="path-gallery")
        c.path_smoothness = gr.Markdown(visible=False, elem_id="path-smoothness")
        _file_outputs(c, "path_plot", "path_video", "path_gif", "path_zip", "Conformity along the path",
                      "path-")
        gr.Markdown("One seed and one noise path for the whole path: a keyframe's frame is the same "
                    "whichever segment it opens or closes. Captions: the keyframe shown (key k), or the "
                    "segment (k→k+1) with its own theta and alpha; then the frame's conformity C. "
                    "A loop's video repeats without a seam.")
    # The API's /path takes its keyframes one by one (keyframe_1 ... keyframe_8), each through
    # the same gate as an upload; the page sends its strip instead.
    c.api_keyframes = [checked_image(f"keyframe {k}", config.max_file_bytes, label=f"keyframe_{k}",
                                     type="filepath", visible=False) for k in range(1, ui.MAX_KEYFRAMES + 1)]


def _model_panel(engine) -> None:
    full, preview = engine.default_settings(preview=False), engine.default_settings(preview=True)
    defaults = {"steps": full.steps, "guidance": full.guidance_scale, "preview steps": preview.steps}
    if engine.kind == "karlo":
        defaults["super-resolution steps"] = full.super_res_steps
    with gr.Accordion("Model and statistics", open=False, elem_id="model-info"):
        gr.Markdown(ui.model_markdown(engine.info(), defaults))
        gr.JSON(ui.json_safe(ui.without_server_paths(engine.info())), label="details")


# -- events ------------------------------------------------------------------------------
def _name_the_numbers(c: SimpleNamespace) -> None:
    """Refusals of number inputs name the API parameter (a refusal says which value)."""
    for name in ("theta", "alpha", "seed", "steps", "super_res_steps", "preview_steps", "max_batch",
                 "fps", "theta_start", "theta_stop", "theta_frames", "alpha_start", "alpha_stop",
                 "alpha_frames"):
        named_range(getattr(c, name), name)
    named_range(c.guidance, "guidance_scale")
    named_range(c.strength, "strength")
    named_range(c.adapter_scale, "adapter_scale")
    named_range(c.path_frames, "frames")


def _settings_values(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch, strength,
                     adapter_scale, prompt) -> dict:
    """The sampling settings' values by name (`_wire`'s ``settings`` lists their components in this order)."""
    return dict(quality=quality, steps=steps, super_res_steps=super_res_steps, preview_steps=preview_steps,
                guidance_scale=guidance_scale, max_batch=max_batch, strength=strength,
                adapter_scale=adapter_scale, prompt=prompt)


def _frame_values(source, target, theta, alpha, seed, *settings) -> dict:
    """The frame inputs' values by name (`_wire`'s ``frame_inputs`` lists their components in this order)."""
    return dict(source=source, target=target, theta=theta, alpha=alpha, seed=seed,
                **_settings_values(*settings))


def _frame_handlers(studio: ui.Studio) -> dict:
    """The one-frame events: the pre-check, /preview, the sliders' preview and full frame."""

    def check_frame(*inputs):  # the gate before the GPU queue: refuse at once what would fail
        studio.frame_request(**_frame_values(*inputs))

    # The public endpoints spell out their parameters: Gradio names the API's after them.
    def render_frame(source, target, theta, alpha, seed, quality, steps, super_res_steps,
                     preview_steps, guidance_scale, max_batch, strength=None, adapter_scale=None, prompt=None,
                     session=None, target_conformity=None, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """/preview: one frame at (theta, alpha), its image and readouts; with a
        target_conformity, at the alpha giving it (readouts["aim"]: wanted, achieved). strength
        (Kandinsky 2.2, IP-Adapter), adapter_scale and prompt (IP-Adapter): the model's own
        settings. The API keeps target_conformity last, as /sequence does."""
        def on_step(step, total):
            progress((step, total), desc="denoising", unit="steps")

        request = studio.frame_request(
            source=source, target=target, theta=theta, alpha=alpha, seed=seed, quality=quality, steps=steps,
            super_res_steps=super_res_steps, preview_steps=preview_steps, guidance_scale=guidance_scale,
            max_batch=max_batch, strength=strength, adapter_scale=adapter_scale, prompt=prompt,
            target_conformity=target_conformity)
        # ZeroGPU pickles the arguments to its worker: a closure cannot go.
        return studio.frame(session, request, on_step=None if on_zero_gpu() else on_step)

    def slider(quality_wanted):
        def handler(*inputs):
            *frame_inputs, session = inputs
            values = _frame_values(*frame_inputs)
            if None in (values["source"], values["target"]) or (quality_wanted, values["quality"]) == (
                    "full", "preview"):
                return gr.skip(), gr.skip(), gr.skip()
            request = studio.frame_request(**{**values, "quality": quality_wanted})
            return studio.frame(session, request)
        return handler

    return {"check_frame": check_frame, "render_frame": render_frame, "slider_preview": slider("preview"),
            "slider_full": slider("full")}


def _files(update: ui.SequenceUpdate) -> tuple:
    """The plot, MP4, GIF, ZIP and smoothness line of a streamed render (None until its last update)."""
    files = update.files or {}
    return files.get("plot"), files.get("mp4"), files.get("gif"), files.get("zip"), files.get("smoothness")


def _sweep_values(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames, alpha_start,
                  alpha_stop, alpha_frames, seed, quality, steps, super_res_steps, preview_steps,
                  guidance_scale, max_batch, fps, strength, adapter_scale, prompt) -> dict:
    """The sequence inputs' values by name (`_wire`'s ``sequence_inputs``, in this order)."""
    return dict(source=source, target=target, sweep=sweep, theta=theta, alpha=alpha, theta_start=theta_start,
                theta_stop=theta_stop, theta_frames=theta_frames, alpha_start=alpha_start,
                alpha_stop=alpha_stop, alpha_frames=alpha_frames, seed=seed, fps=fps,
                **_settings_values(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch,
                                   strength, adapter_scale, prompt))


def _sequence_handlers(studio: ui.Studio) -> dict:
    """The sequence events: the pre-check, /sequence (plain outputs) and the page's own stream."""

    def check_sequence(*inputs):
        studio.sequence_request(**_sweep_values(*inputs))

    def render_sweep(source, target, sweep, theta, alpha, theta_start, theta_stop, theta_frames,
                     alpha_start, alpha_stop, alpha_frames, seed, quality, steps, super_res_steps,
                     preview_steps, guidance_scale, max_batch, fps, strength, adapter_scale, prompt, session,
                     target_conformity=None, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """/sequence: a sweep of theta, alpha or both: gallery, plot, MP4, GIF, ZIP and smoothness
        line; with a target_conformity (theta sweep), every frame's alpha gives it.

        Streamed: the gallery grows batch by batch (its progress in frames); the files come
        with the last update.
        """
        request = studio.sequence_request(
            source=source, target=target, sweep=sweep, theta=theta, alpha=alpha, theta_start=theta_start,
            theta_stop=theta_stop, theta_frames=theta_frames, alpha_start=alpha_start, alpha_stop=alpha_stop,
            alpha_frames=alpha_frames, seed=seed, quality=quality, steps=steps,
            super_res_steps=super_res_steps, preview_steps=preview_steps, guidance_scale=guidance_scale,
            max_batch=max_batch, strength=strength, adapter_scale=adapter_scale, prompt=prompt, fps=fps,
            target_conformity=target_conformity)
        for update in studio.sequence(session, request):
            progress((update.done, update.total), desc="Rendering frames", unit="frames")
            yield (update.gallery, *_files(update), update.session)

    def render_sweep_page(request: gr.Request, progress=gr.Progress(), *inputs):  # noqa: B008
        """The page's sequence: as /sequence, with "frame k of N" in the gallery's label, the
        batch's steps, frames done, time taken and left in the status line, and a Stop that ends
        the batch in progress at its next step."""
        *sequence_inputs, session = inputs
        values = _sweep_values(*sequence_inputs)
        columns = _gallery_columns(values["sweep"], values["alpha_frames"])
        sweep = studio.sequence_request(**values)
        watch = _page_watch(studio, request, progress)
        for update in studio.sequence(session, sweep, **watch):
            frames = gr.Gallery(update.gallery, label=f"Frames: {update.status}", columns=columns,
                                visible=bool(update.gallery))  # no empty box before the first batch
            yield frames, *_shown_files(update), update.session, _status(update)

    return {"check_sequence": check_sequence, "render_sweep": render_sweep,
            "render_sweep_page": render_sweep_page}


def _page_watch(studio: ui.Studio, request: gr.Request | None, progress) -> dict:
    """A page render's progress line (Gradio's bar over the status line) and Stop switch.

    On ZeroGPU the render runs in another process, which neither can reach: the gallery's label
    counts the frames there.
    """
    if on_zero_gpu():
        return {}

    def report(fraction: float, text: str) -> None:
        progress(fraction, desc=text)

    return {"progress": report, "stop": studio.stop_switch(getattr(request, "session_hash", None))}


def _status(update: ui.SequenceUpdate):
    """The status line under a page render's buttons: left alone while Gradio's bar shows the
    progress (an update still in flight when Stop is pressed must not blank its "Stopped")."""
    return gr.skip() if update.files is None else f"Done: all {update.total} frames."


def _shown_files(update: ui.SequenceUpdate) -> tuple:
    """The plot, MP4, GIF, ZIP and smoothness line as page updates: each shown once the render has it."""
    return tuple(gr.update(value=f, visible=f is not None) for f in _files(update))


def _path_values(frames, loop, spacing, ease, alpha, seed, quality, steps, super_res_steps, preview_steps,
                 guidance_scale, max_batch, fps, strength, adapter_scale, prompt) -> dict:
    """The path inputs' values by name after the keyframes (`_wire_path`'s ``shape``, in this order)."""
    return dict(frames=frames, loop=loop, spacing=spacing, ease=ease, alpha=alpha, seed=seed, fps=fps,
                **_settings_values(quality, steps, super_res_steps, preview_steps, guidance_scale, max_batch,
                                   strength, adapter_scale, prompt))


def _path_handlers(studio: ui.Studio) -> dict:
    """The path events: the pre-check, /path (keyframes one by one) and the page's stream (its strip)."""

    def check_path(strip, *inputs):
        studio.path_request(keyframes=ui.strip_paths(strip), **_path_values(*inputs))

    # Gradio passes every input; a None default makes an API parameter optional (keyframe_3 on),
    # and the rest take their components' values as defaults.
    def render_path(keyframe_1, keyframe_2, keyframe_3=None, keyframe_4=None, keyframe_5=None,
                    keyframe_6=None, keyframe_7=None, keyframe_8=None, frames=None, loop=None, spacing=None,
                    ease=None, alpha=None, seed=None, quality=None, steps=None, super_res_steps=None,
                    preview_steps=None, guidance_scale=None, max_batch=None, fps=None, strength=None,
                    adapter_scale=None, prompt=None, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """/path: a path through 2 to 8 keyframes (in order; unused ones None), open or a loop:
        gallery, plot, MP4, GIF, ZIP and smoothness line. alpha: one value, or one per segment ("0, 1, 2");
        spacing "uniform", "angle" or "perceptual"; ease in and out of each keyframe. Streamed like
        /sequence."""
        keyframes = [keyframe_1, keyframe_2, keyframe_3, keyframe_4, keyframe_5, keyframe_6, keyframe_7,
                     keyframe_8]
        request = studio.path_request(
            keyframes=keyframes, frames=frames, loop=loop, spacing=spacing, ease=ease, alpha=alpha, seed=seed,
            quality=quality, steps=steps, super_res_steps=super_res_steps, preview_steps=preview_steps,
            guidance_scale=guidance_scale, max_batch=max_batch, strength=strength,
            adapter_scale=adapter_scale, prompt=prompt, fps=fps)
        for update in studio.path(request):
            progress((update.done, update.total), desc="Rendering frames", unit="frames")
            yield (update.gallery, *_files(update))

    def render_path_page(request: gr.Request, progress=gr.Progress(), *inputs):  # noqa: B008
        """The page's path: as /path from the strip, with progress and Stop as the page's sequence."""
        strip, *shape = inputs
        path = studio.path_request(keyframes=ui.strip_paths(strip), **_path_values(*shape))
        watch = _page_watch(studio, request, progress)
        for update in studio.path(path, **watch):
            yield (gr.Gallery(update.gallery, label=f"Path frames: {update.status}", columns=PATH_COLUMNS,
                              visible=bool(update.gallery)), *_shown_files(update), _status(update))

    return {"check_path": check_path, "render_path": render_path, "render_path_page": render_path_page}


def _strip_handlers() -> dict:
    """The keyframe strip: add (an upload, the source, the target, the current frame), move, remove."""

    def add_upload(strip, image):
        if image is None:
            return gr.skip(), gr.skip()
        _check_upload(image, "keyframe")
        return ui.add_keyframes(strip, [image]), None

    def add_from(missing: str):
        def handler(strip, image):
            if image is None:
                raise ui.RequestError(missing)
            return ui.add_keyframes(strip, [image])
        return handler

    def move(step: int):
        return lambda strip, index: ui.move_keyframe(strip, index, step)

    def remove(strip, index):
        return ui.remove_keyframe(strip, index), None

    return {"add_upload": add_upload,
            "add_source": add_from("There is no source image yet: upload one first, or click an example."),
            "add_target": add_from("There is no target image yet: upload one first, or click an example."),
            "add_frame": add_from("There is no frame yet: generate one first."),
            "earlier": move(-1), "later": move(+1), "remove": remove}


def _selected(evt: gr.SelectData):
    """The index of the keyframe clicked in the strip."""
    return evt.index


def _cleared():
    """An empty image box: a refused upload is not left in it."""
    return None


def _check_upload(image, role: str):
    """Decode an upload at once, so a broken file is reported when it arrives."""
    if image is not None:
        try:
            load_image(image)
        except ImageInputError as e:
            raise gr.Error(f"The {role} {e.problem}.", print_exception=False) from None


def _handlers(studio: ui.Studio) -> SimpleNamespace:
    """The event functions, each turning any failure into a plain gr.Error."""

    def stop_render(request: gr.Request):
        """Stop this page session's sequence or path render (at its next denoising step)."""
        studio.stop(getattr(request, "session_hash", None))

    handlers = {**_frame_handlers(studio), **_sequence_handlers(studio), **_path_handlers(studio),
                **_strip_handlers(), "check_upload": _check_upload, "stop_render": stop_render}
    return SimpleNamespace(**{name: plain_errors(fn) for name, fn in handlers.items()})


def _swap_inputs(source, target, session):
    """Source becomes target and back; the session's embeddings follow their images."""
    session = session if isinstance(session, dict) else {}
    return target, source, {"source": session.get("target"), "target": session.get("source")}


def _frame_as_source(frame):
    """Keep editing from here: the current frame becomes the source image."""
    if frame is None:
        raise gr.Error("There is no frame yet: generate one first.", print_exception=False)
    return frame


def _gallery_columns(sweep, alpha_frames) -> int:
    """A grid shows one theta per row; a sweep 8 frames a row (fewer frames keep their size)."""
    return int(alpha_frames) if sweep == "grid" else 8


def _wire(studio: ui.Studio, c: SimpleNamespace, session) -> None:
    h = _handlers(studio)
    _name_the_numbers(c)
    settings = [c.quality, c.steps, c.super_res_steps, c.preview_steps, c.guidance, c.max_batch]
    # The model family's own settings come last (the API's positions of the others stay put).
    family_settings = [c.strength, c.adapter_scale, c.prompt]
    frame_inputs = [c.source, c.target, c.theta, c.alpha, c.seed, *settings, *family_settings]
    frame_outputs = [c.frame, c.readouts, session]
    sequence_inputs = [c.source, c.target, c.sweep, c.theta, c.alpha, c.theta_start, c.theta_stop,
                       c.theta_frames, c.alpha_start, c.alpha_stop, c.alpha_frames, c.seed, *settings, c.fps,
                       *family_settings]
    private = {"api_visibility": "private"}
    # Pre-checks are queued (an unqueued event's error never reaches this Gradio's page) in
    # their own small group, so a refusal shows at once even while the GPU is busy.
    check = {"concurrency_id": CHECK_QUEUE, "concurrency_limit": 2, "show_progress": "hidden", **private}
    gpu = {"concurrency_id": GPU_QUEUE}

    _wire_uploads(h, c)
    checked = c.generate_button.click(h.check_frame, frame_inputs, None, **check)
    checked.success(None, js=SCROLL_TO_FRAME, **private)
    checked.success(h.render_frame, [*frame_inputs, session, c.api_target_conformity],
                    frame_outputs, api_name="preview", **gpu)
    slider_inputs = [*frame_inputs, session]
    for slider in (c.theta, c.alpha):
        slider.release(h.slider_preview, slider_inputs, frame_outputs, trigger_mode="always_last",
                       show_progress="minimal", **gpu, **private).success(
            h.slider_full, slider_inputs, frame_outputs, show_progress="minimal", **gpu, **private)

    def render_after(event, **preview_options):
        """After ``event``, render like a released slider: the fast preview, then the full frame."""
        preview = event.then(h.slider_preview, slider_inputs, frame_outputs, **preview_options, **gpu,
                             **private)
        preview.success(h.slider_full, slider_inputs, frame_outputs, show_progress="minimal", **gpu,
                        **private)

    # An example fills the inputs (Gradio's own unqueued event), then renders like a slider.
    render_after(c.examples.load_input_event)
    c.swap_button.click(_swap_inputs, [c.source, c.target, session], [c.source, c.target, session], **check)
    # New seed: another noise path, rendered at once like a slider (nothing happens without images).
    # always_last: clicks faster than the preview end on the last seed's frame, as slider drags do.
    render_after(c.random_seed_button.click(lambda: random.randrange(2**32), None, c.seed, queue=False,
                                            **private), trigger_mode="always_last")
    # The frame becomes the source: the readout says its comparisons wait for the next render.
    c.use_frame_button.click(_frame_as_source, c.frame, c.source, **check).success(
        ui.source_replaced_markdown, c.readouts, c.readout, queue=False, **private)
    population = None if studio.engine.stats is None else studio.engine.stats.n
    c.readouts.change(lambda r: ui.readouts_markdown(r, studio.engine.stats_note, population), c.readouts,
                      c.readout, queue=False, **private)
    sequence_outputs = [c.gallery, c.plot, c.video, c.gif_file, c.zip_file, c.smoothness, session]
    _wire_render(h.stop_render, c.sequence_button, c.stop_button, c.gallery, c.sequence_status, "Frames",
                 (h.check_sequence, sequence_inputs), h.render_sweep_page, [*sequence_inputs, session],
                 sequence_outputs, check, gpu)
    # The API's /sequence: the same render with plain outputs (no trigger on the page); the API's
    # target_conformity (hidden on the page, where Aim sets the alpha slider instead) comes last.
    gr.on([], h.render_sweep, [*sequence_inputs, session, c.api_target_conformity], sequence_outputs,
          api_name="sequence", **gpu)
    _wire_aim(studio, c, session, frame_inputs, frame_outputs)
    _wire_path(h, c, [*settings, c.fps, *family_settings], check, gpu)


def _wire_uploads(h: SimpleNamespace, c: SimpleNamespace) -> None:
    """The source and target are checked as they arrive; a refused one does not stay in its box."""
    private = {"api_visibility": "private"}
    for box, role in ((c.source, "source image"), (c.target, "target image")):
        checked_upload = box.upload(functools.partial(h.check_upload, role=role), box, None,
                                    concurrency_limit=1, concurrency_id="check-upload",
                                    show_progress="minimal", **private)
        # The message stays; the box empties. (A refusal by the queue itself, or a second image
        # dropped before the first one's check ran, is cleared too: the user uploads again.)
        checked_upload.failure(_cleared, None, box, queue=False, **private)


def _wire_path(h: SimpleNamespace, c: SimpleNamespace, settings: list, check: dict, gpu: dict) -> None:
    """The keyframe strip's buttons, the page's path render with Stop, and the API's /path.
    ``settings``: the sampling settings, fps and the family's settings, in `_path_values`' order."""
    private = {"api_visibility": "private"}
    strip, selected = c.keyframes, c.keyframe_selected
    checked_upload = c.keyframe_add.upload(h.add_upload, [strip, c.keyframe_add], [strip, c.keyframe_add],
                                           concurrency_limit=1, concurrency_id="check-upload",
                                           show_progress="minimal", **private)
    checked_upload.failure(_cleared, None, c.keyframe_add, queue=False, **private)
    for button, add, image in ((c.add_source_button, h.add_source, c.source),
                               (c.add_target_button, h.add_target, c.target),
                               (c.add_frame_button, h.add_frame, c.frame)):
        button.click(add, [strip, image], strip, **check)
    strip.select(_selected, None, selected, queue=False, **private)
    c.earlier_button.click(h.earlier, [strip, selected], [strip, selected], **check)
    c.later_button.click(h.later, [strip, selected], [strip, selected], **check)
    c.remove_button.click(h.remove, [strip, selected], [strip, selected], **check)
    c.clear_button.click(lambda: ([], None), None, [strip, selected], queue=False, **private)

    shape = [c.path_frames, c.loop, c.spacing, c.ease, c.path_alpha, c.seed, *settings]
    outputs = [c.path_gallery, c.path_plot, c.path_video, c.path_gif, c.path_zip, c.path_smoothness]
    _wire_render(h.stop_render, c.path_button, c.path_stop_button, c.path_gallery, c.path_status,
                 "Path frames", (h.check_path, [strip, *shape]), h.render_path_page, [strip, *shape], outputs,
                 check, gpu)
    gr.on([], h.render_path, [*c.api_keyframes, *shape], outputs, api_name="path", **gpu)


def _wire_render(stop_render, button, stop_button, gallery, status, label: str, pre_check: tuple, render_fn,
                 inputs: list, outputs: list, check: dict, gpu: dict) -> None:
    """A page render with its Render and Stop buttons: Render is disabled while one runs (its
    progress shown over the status line); Stop ends the batch in progress at its next denoising
    step, keeps the frames shown and lets the next Render start right away."""
    private = {"api_visibility": "private"}
    checked = button.click(*pre_check, None, **check)  # (function, inputs)
    checked.success(lambda: (gr.Button(interactive=False), gr.Markdown("", visible=True)), None,
                    [button, status], queue=False, **private)
    render = checked.success(render_fn, inputs, [*outputs, status], show_progress="full",
                             show_progress_on=[status], **gpu, **private)
    render.then(lambda: gr.Button(interactive=True), None, button, queue=False, **private)

    def stop(request: gr.Request):
        stop_render(request)
        return (gr.Gallery(label=f"{label} (stopped)"), gr.Button(interactive=True),
                "Stopped: the frames shown stay; the batch in progress ends at its next step.")

    stop_button.click(stop, None, [gallery, button, status], cancels=[render], queue=False, **private)


def _aim_handlers(studio: ui.Studio) -> SimpleNamespace:
    """Aim: a frame rendered at the alpha giving the target conformity (found inside the frame's
    GPU call), then the slider set to that alpha, then the full frame."""

    def check(*inputs):
        *frame_inputs, _session, target_conformity = inputs
        studio.aim_request(**_frame_values(*frame_inputs), target_conformity=target_conformity)

    def aimed(quality_wanted):
        def handler(*inputs):
            *frame_inputs, session, target_conformity = inputs
            values = _frame_values(*frame_inputs)
            if quality_wanted == "full" and values["quality"] == "preview":
                return gr.skip(), gr.skip(), gr.skip()
            request = studio.frame_request(**{**values, "quality": quality_wanted},
                                           target_conformity=target_conformity)
            return studio.frame(session, request)
        return handler

    return SimpleNamespace(check=plain_errors(check), preview=plain_errors(aimed("preview")),
                           full=plain_errors(aimed("full")), show=plain_errors(ui.aimed_alpha))


def _wire_aim(studio: ui.Studio, c: SimpleNamespace, session, frame_inputs, frame_outputs) -> None:
    """Aim: the frame renders at the aimed alpha (preview), the alpha slider moves there, then the
    full frame follows."""
    h = _aim_handlers(studio)
    private = {"api_visibility": "private"}
    named_range(c.api_target_conformity, "target_conformity")
    inputs = [*frame_inputs, session, c.target_conformity]
    on_gpu = {"show_progress": "minimal", "concurrency_id": GPU_QUEUE, **private}
    c.aim_button.click(lambda: "", None, c.aim_note, queue=False, **private)  # no old note beside a refusal
    # Queued (cheap, its own queue): an unqueued event's gr.Error never reaches the page.
    c.aim_button.click(h.check, inputs, None, concurrency_limit=4, concurrency_id="check-aim",
                       show_progress="hidden", **private).success(
        h.preview, inputs, frame_outputs, **on_gpu).success(
        h.show, c.readouts, [c.alpha, c.aim_note], queue=False, **private).success(
        h.full, inputs, frame_outputs, **on_gpu)


# -- serving: bounds on what one client may ask ---------------------------------------------
def launch_options(config: ui.StudioConfig) -> dict:
    """`demo.launch` keyword arguments for a page built by `build_demo(pipe, config)`."""
    from starlette.middleware import Middleware

    # Two inline images in base64 (4/3 of their bytes) and the other parameters.
    body_limit = 2 * (config.max_file_bytes * 4 // 3 + 4) + 2**20
    quota = gate.UploadQuota(ui.parse_file_size(config.upload_quota))
    uploads = Middleware(gate.UploadLimit, max_request_bytes=config.max_file_bytes + 2**20,
                         max_files=UPLOAD_FILES, quota=quota,
                         trusted=gate.trusted_proxies(config.trusted_proxies))
    return dict(
        max_file_size=config.max_file_size,
        allowed_paths=[],  # serve only uploads and what the app itself returns
        show_error=False,  # gr.Error messages only; unexpected errors stay in the server log
        css=CSS,
        app_kwargs={"middleware": [Middleware(gate.RequestBodyLimit, max_bytes=body_limit), uploads,
                                   Middleware(gate.CancelAtOnce)]},
    )


def build_demo(pipe, config: ui.StudioConfig | None = None) -> gr.Blocks:
    """The studio's page around a loaded engine (``pipe``: `vslerp_app.load_pipeline`'s), queue set up.

    Launch it with `demo.launch(**launch_options(config))`, as `main` does. Refuses
    (`gradio_patches.GradioMismatchError`) a Gradio its request gate was not tested with.
    """
    gradio_patches.check_gradio()
    config, engine = config or ui.StudioConfig(), pipe
    studio = ui.Studio(engine, config, gpu=gpu)
    c = SimpleNamespace(config=config)
    with gr.Blocks(title="vSLERP Studio", delete_cache=(1800, 3600), analytics_enabled=False) as demo:
        gr.Markdown(
            "# vSLERP Studio\n"
            "Edit an image by moving through CLIP's geometry: **theta** walks from the source (0) "
            "to the target (1); **alpha** moves the centre of rotation along the image-modality "
            f"mean (0 is plain SLERP, 1 the ellipsoid centre): {ui.ALPHA_ADVICE}. Each frame shows "
            "its *conformity* (how typical it is among natural images; higher is more typical), "
            "beside the source's and the target's. "
            "Levi & Gilboa, *The Double-Ellipsoid Geometry of CLIP*, ICML 2025."
        )
        session = gr.State({})
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                _input_column(engine, c)
            with gr.Column(scale=6):
                _frame_column(c)
        _sequence_panel(config, c)
        _path_panel(config, c, engine.stats is not None)
        _model_panel(engine)
        _wire(studio, c, session)
    demo.queue(default_concurrency_limit=1, max_size=config.queue_size)
    gate.bound_waiting(demo, config.session_queue_size, config.address_queue_size,
                       gate.trusted_proxies(config.trusted_proxies))
    gate.name_file_input(c.keyframes, "keyframe strip")
    gate.install_file_gate(demo)
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
    p.add_argument("--max-batch", type=int, default=int(env("VSLERP_MAX_BATCH", str(DEFAULT_MAX_BATCH))),
                   help="most frames denoised at once (default: %(default)s)")
    p.add_argument("--host", default=None, help="interface to listen on (env GRADIO_SERVER_NAME)")
    p.add_argument("--port", type=int, default=None, help="port (env GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--max-file-size", default=env("VSLERP_MAX_FILE_SIZE", "25mb"),
                   help="largest upload (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=int(env("VSLERP_QUEUE_SIZE", "16")),
                   help="most requests waiting for the GPU (default: %(default)s)")
    p.add_argument("--session-queue-size", type=int, default=int(env("VSLERP_SESSION_QUEUE_SIZE", "4")),
                   help="most requests one browser tab or API client may have waiting (default: "
                        "%(default)s)")
    p.add_argument("--address-queue-size", type=int, default=int(env("VSLERP_ADDRESS_QUEUE_SIZE", "8")),
                   help="most requests one client address may have waiting (default: %(default)s)")
    p.add_argument("--upload-quota", default=env("VSLERP_UPLOAD_QUOTA", "100mb"),
                   help="most bytes one client address may upload an hour (default: %(default)s)")
    # On a Hugging Face Space (SPACE_ID set) only the Space's proxy can connect: trust it.
    p.add_argument("--trusted-proxies", default=env("VSLERP_TRUSTED_PROXIES", "*" if env("SPACE_ID") else ""),
                   help="addresses of reverse proxies whose X-Forwarded-For names the client, comma-"
                        "separated, or * when only a proxy can connect (default: * on a Space, else none)")
    p.add_argument("--max-sequence-frames", type=int,
                   default=int(env("VSLERP_MAX_SEQUENCE_FRAMES", str(ui.MAX_SEQUENCE_FRAMES))),
                   help="most frames one sequence request may render (default: %(default)s, the "
                        "paper's 6 x 16 grid)")
    p.add_argument("--share", action="store_true", help="a public gradio.live link")
    args = p.parse_args(argv)
    if args.max_sequence_frames < 1:
        p.error(f"--max-sequence-frames must be at least 1, got {args.max_sequence_frames}")
    if args.session_queue_size < 1:
        p.error(f"--session-queue-size must be at least 1, got {args.session_queue_size}")
    if args.address_queue_size < 1:
        p.error(f"--address-queue-size must be at least 1, got {args.address_queue_size}")
    try:
        ui.parse_file_size(args.upload_quota)
    except ValueError as e:
        p.error(f"--upload-quota: {e}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, load the model once, build the page and serve it."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:  # before the model loads: an untested Gradio is refused at once
        gradio_patches.check_gradio()
    except gradio_patches.GradioMismatchError as e:
        raise SystemExit(f"vSLERP Studio: {e}") from None
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        engine = load_pipeline(args.model, device=args.device, dtype=args.dtype, stats=args.stats,
                             offload=args.offload, max_batch=args.max_batch, reference=args.reference,
                             reference_stats=args.reference_stats)
    except HubUnreachableError as e:  # offline: say what works without the hub
        raise SystemExit(f"vSLERP Studio: cannot load model {args.model!r}: {e}.\n{OFFLINE_HINT}") from None
    except Exception as e:  # one clear line, no traceback
        raise SystemExit(f"vSLERP Studio: cannot load model {args.model!r}: {e}") from None
    config = ui.StudioConfig(max_sequence_frames=args.max_sequence_frames, queue_size=args.queue_size,
                             session_queue_size=args.session_queue_size, max_file_size=args.max_file_size,
                             address_queue_size=args.address_queue_size, upload_quota=args.upload_quota,
                             trusted_proxies=args.trusted_proxies)
    # The client's address is the gate's to judge (--trusted-proxies): uvicorn would otherwise
    # take X-Forwarded-For from any local peer on its own.
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    demo = build_demo(engine, config)
    # Quiet start: Gradio's own lines (and httpx's requests to the new server) are left out; the
    # one line printed is where the studio runs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
                prevent_thread_lock=True, **launch_options(config))
    print(f"vSLERP Studio: {demo.share_url or demo.local_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
