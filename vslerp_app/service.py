"""The studio's service layer: everything `app.py` does that needs no Gradio, testable alone.

What lives here: the studio session and its caches and streams: the server's configuration
(`StudioConfig`), the per-session embedding cache entries (one per input image, kept in
`gr.State` by the app so nothing is shared between users), the server's frame cache
(`FrameCache`: the same inputs and settings give the same frame at once), the gate every
input image passes before the GPU queue (`check_input_image`: byte size, format, pixel
count, nothing decoded), and `Studio`: requests parsed once (`vslerp_app.requests`) in,
one frame, a sweep or a path through keyframes out, the sweeps and paths streamed batch by
batch over `vslerp_app.render.iter_render` (the code of `vslerp render`), with the request
folders and their clean-up. Text for the page (readouts, captions, refusals) lives in
`vslerp_app.page_text`, the keyframe strip in `vslerp_app.strip`; both are re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vslerp_app.files import RenderError
from vslerp_app.images import (
    ImageHeader,
    ImageInputError,
    check_image,
    data_url_bytes,
    image_fingerprint,
    load_image,
)
from vslerp_app.outputs import DEFAULT_FPS, OutputRequest
from vslerp_app.page_text import (
    DISK_FULL,
    aim_markdown,
    aimed_alpha,
    at_an_end,
    files_message,
    frame_caption,
    frame_readouts,
    json_safe,
    model_markdown,
    path_caption,
    readouts_markdown,
    sequence_outputs,
    source_replaced_markdown,
    user_message,
    without_server_paths,
)
from vslerp_app.paths import MIN_KEYFRAMES
from vslerp_app.render import iter_render
from vslerp_app.requests import (
    MAX_KEYFRAMES,
    MAX_SEQUENCE_FRAMES,
    SWEEP_MODES,
    AimAt,
    FrameRequest,
    PathRequest,
    RequestError,
    Sampling,
    SweepRequest,
    sweep_pairs,
    sweep_values,
)
from vslerp_app.specs import ALPHA_ADVICE, STUDIO_ALPHA_RANGE
from vslerp_app.stats import Readouts
from vslerp_app.strip import add_keyframes, keyframe_strip, move_keyframe, remove_keyframe, strip_paths

__all__ = [
    "ALPHA_ADVICE",
    "DEFAULT_FPS",
    "MAX_SEQUENCE_FRAMES",
    "STUDIO_ALPHA_RANGE",
    "SWEEP_MODES",
    "AimAt",
    "FrameCache",
    "FrameRequest",
    "PathRequest",
    "Sampling",
    "SweepRequest",
    "InputEntry",
    "SequenceUpdate",
    "Studio",
    "aim_markdown",
    "aimed_alpha",
    "StudioConfig",
    "RenderClock",
    "RenderStopped",
    "RequestError",
    "check_input_image",
    "file_key",
    "parse_file_size",
    "embed_input",
    "frame_caption",
    "frame_readouts",
    "json_safe",
    "model_markdown",
    "without_server_paths",
    "readouts_markdown",
    "source_replaced_markdown",
    "sequence_outputs",
    "sweep_pairs",
    "sweep_values",
    "user_message",
    "new_workdir",
    "cleanup_workdirs",
    "MAX_KEYFRAMES",
    "add_keyframes",
    "keyframe_strip",
    "move_keyframe",
    "path_caption",
    "remove_keyframe",
    "strip_paths",
]

logger = logging.getLogger(__name__)

WORK_ROOT = Path(tempfile.gettempdir()) / "vslerp-studio"
# What a studio sequence or path writes beside its frames (its fps is the request's).
_STUDIO_OUTPUTS = OutputRequest(gif=True, mp4=True, zip=True, contact=False, plot=True)


_SIZE_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def parse_file_size(size: str | int) -> int:
    """Bytes of a size as Gradio's ``max_file_size`` reads it ("25mb" = 25 * 2**20)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size
    text = str(size).replace(" ", "").upper()
    digits = len(text) - len(text.lstrip("0123456789"))
    unit = text[digits:] or "B"
    if not digits or unit not in _SIZE_UNITS:
        raise ValueError(f"a file size is a number and a unit (B, KB, MB, GB), like 25mb; got {size!r}")
    return int(text[:digits]) * _SIZE_UNITS[unit]


@dataclass
class StudioConfig:
    """How the studio serves a loaded pipeline (`app.build_demo(pipe, config)`).

    Attributes:
        max_sequence_frames: most frames one sequence request may render.
        queue_size: most requests waiting for the model.
        session_queue_size: most requests one session (a browser tab, a `gradio_client`
            Client) may have waiting, so one client cannot fill the queue.
        max_file_size: largest image file, as Gradio reads it ("25mb"): uploads, inline
            ``data:`` URLs and downloads alike.
        frame_cache_mb: memory for the server's frame cache (frames already rendered).
        address_queue_size: most requests one client address may have waiting (however
            many sessions it opens).
        upload_quota: most bytes one client address may upload an hour ("100mb").
        trusted_proxies: addresses of reverse proxies whose X-Forwarded-For header names
            the client, comma-separated, or "*" when only a proxy can connect; "" for none.
    """

    max_sequence_frames: int = MAX_SEQUENCE_FRAMES
    queue_size: int = 16
    session_queue_size: int = 4
    max_file_size: str = "25mb"
    frame_cache_mb: int = 128
    address_queue_size: int = 8
    upload_quota: str = "100mb"
    trusted_proxies: str = ""

    def __post_init__(self):
        if self.max_sequence_frames < 1:
            raise ValueError(f"max_sequence_frames must be at least 1, got {self.max_sequence_frames}")
        if self.session_queue_size < 1:
            raise ValueError(f"session_queue_size must be at least 1, got {self.session_queue_size}")
        if self.address_queue_size < 1:
            raise ValueError(f"address_queue_size must be at least 1, got {self.address_queue_size}")
        parse_file_size(self.max_file_size)
        parse_file_size(self.upload_quota)

    @property
    def max_file_bytes(self) -> int:
        return parse_file_size(self.max_file_size)


# -- inputs and their embeddings ---------------------------------------------------------
@dataclass
class InputEntry:
    """One input image of a session: its content keys, raw embedding and readouts.

    ``file_key`` is the hash of the file's bytes (equal bytes reuse the entry without
    decoding), ``key`` the fingerprint of its decoded pixels.
    """

    key: str
    embedding: torch.Tensor
    readouts: Readouts
    file_key: str | None = None


def file_key(path) -> str:
    """sha256 of a file's bytes: a cheap content key for the caches (no decoding)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_input_image(payload_url: str | None, path, role: str,
                      max_bytes: int) -> tuple[bytes, ImageHeader] | None:
    """The gate every input image passes before anything decodes it; RequestError if refused.

    ``payload_url`` is an inline ``data:`` URL (or None), ``path`` a file already on the
    server (an upload, a download). Checked: the byte size, the format allow-list and the
    pixel count from the header (`vslerp_app.images.check_image`), with the messages an
    upload gets. Returns a data: URL's bytes and header (for the caller to store), else None.
    """
    try:
        if payload_url is not None and payload_url.startswith("data:"):
            data = data_url_bytes(payload_url, name=role, max_bytes=max_bytes)
            return data, check_image(data, name=role, max_bytes=max_bytes)
        check_image(path, name=role, max_bytes=max_bytes)
        return None
    except ImageInputError as e:
        raise RequestError(f"The {role} {e.problem}.") from None


def embed_input(engine, path, role: str, cached: InputEntry | None = None, key_of_file: str | None = None
                ) -> InputEntry:
    """The embedding of the image at ``path``, reusing ``cached`` when the content is equal.

    ``role`` ("source image", "target image") names the input in error messages. The
    embedding bypasses the engine's own cache (``encode(..., cache=False)``), which every
    caller of the process shares: the app keeps each session's entries in that session's
    state. Equal file bytes reuse the entry without decoding; equal pixels (another file of
    the same image) without encoding. ``key_of_file``: the file's `file_key`, when known.
    """
    if path is None:
        raise RequestError(f"Add a {role} first (upload, paste or webcam), or click an example.")
    if key_of_file is None:
        try:
            key_of_file = file_key(path)
        except OSError:
            key_of_file = None  # load_image below says what is wrong with the path
    if cached is not None and key_of_file is not None and cached.file_key == key_of_file:
        return cached
    try:
        img = load_image(path)
    except ImageInputError as e:
        raise RequestError(f"The {role} {e.problem}.") from None
    key = image_fingerprint(img)
    if cached is not None and cached.key == key:
        return dataclasses.replace(cached, file_key=key_of_file)
    emb = engine.encode(img, cache=False)
    return InputEntry(key=key, embedding=emb, readouts=engine.readouts(emb), file_key=key_of_file)


# -- the frame cache ---------------------------------------------------------------------
class FrameCache:
    """Frames already rendered, by everything that decides their pixels; LRU, bounded in bytes.

    The key holds both inputs' content keys, theta, alpha, the seed and the effective
    sampling settings, so a frame is never served for other inputs. Thread-safe.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(image) -> int:
        return image.width * image.height * len(image.getbands())

    def get(self, key: tuple):
        """(image, readouts) or None; a hit becomes the most recent entry."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, image, readouts: dict) -> None:
        size = self._size(image)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self.bytes -= self._size(self._items.pop(key)[0])
            self._items[key] = (image, readouts)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (old, _) = self._items.popitem(last=False)
                self.bytes -= self._size(old)

    def __len__(self) -> int:
        return len(self._items)


# -- files of a sequence ------------------------------------------------------------------
def new_workdir(root: Path = WORK_ROOT) -> Path:
    """A fresh folder for one request's files (Gradio copies what it returns to its cache)."""
    path = root / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def cleanup_workdirs(root: Path = WORK_ROOT, max_age_s: float = 3600.0) -> int:
    """Delete request folders older than ``max_age_s``; returns how many were removed."""
    if not root.is_dir():
        return 0
    removed, now = 0, time.time()
    for child in root.iterdir():
        try:
            if child.is_dir() and now - child.stat().st_mtime > max_age_s:
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
        except OSError:
            continue
    return removed


# -- the studio: requests in, frames and files out ----------------------------------------
def _no_decorator(duration: int):
    return lambda fn: fn


@dataclass
class SequenceUpdate:
    """One step of a streamed sequence (`Studio.sequence`).

    Attributes:
        gallery: (image path, caption) of every frame on disk so far, in sweep order.
        done, total: frames rendered so far and in the sequence.
        files: on the last update only, the plot, GIF, MP4 and ZIP paths (None where absent).
        session: the session's new entries (the embedded inputs).
    """

    gallery: list[tuple[str, str]]
    done: int
    total: int
    files: dict | None
    session: dict

    @property
    def status(self) -> str:
        if self.files is not None:
            return f"all {self.total}"
        return f"frame {self.done} of {self.total}"


# The studio's sampling settings by name, as `Sampling.parse` takes them.
SAMPLING_SETTINGS = ("quality", "steps", "super_res_steps", "preview_steps", "guidance_scale", "max_batch",
                     "strength", "adapter_scale", "prompt")


def _sampling_of(values: dict) -> tuple[Sampling, dict]:
    """(the `Sampling` of a form's values, the other values)."""
    sampling = Sampling.parse(**{k: values[k] for k in SAMPLING_SETTINGS if k in values})
    return sampling, {k: v for k, v in values.items() if k not in SAMPLING_SETTINGS}


class Studio:
    """What the app's events do, without Gradio: check a request, render, lay out the result.

    ``gpu(duration)`` decorates the two functions that run the model (`spaces.GPU` on a
    ZeroGPU Space; by default nothing). Sessions are plain dicts {"source": InputEntry,
    "target": InputEntry} the app keeps per browser session. Frames are cached per server
    (`FrameCache`), keyed by the inputs' content and every setting.
    """

    def __init__(self, engine, config: StudioConfig | None = None, gpu=_no_decorator):
        self.engine = engine
        self.config = config or StudioConfig()
        self.frames = FrameCache(self.config.frame_cache_mb * 2**20)
        self.work_root = WORK_ROOT  # each sequence's folder lives here while it renders
        self._stops: dict[str, threading.Event] = {}  # each page session's Stop of its render
        self.run_frame = gpu(60)(self._run_frame)
        self.run_sequence = gpu(240)(self._run_sequence)
        self.run_path = gpu(240)(self._run_path)

    # -- Stop -------------------------------------------------------------------------
    def stop_switch(self, session_id: str | None) -> threading.Event | None:
        """A fresh Stop switch for a page session's new render (None without a session id)."""
        if session_id is None:
            return None
        switch = self._stops[session_id] = threading.Event()
        return switch

    def _release(self, switch: threading.Event | None) -> None:
        """Forget a finished render's Stop switch (a session's later render has its own)."""
        for session_id, registered in list(self._stops.items()):
            if registered is switch:
                self._stops.pop(session_id, None)

    def stop(self, session_id: str | None) -> None:
        """Stop the session's render: its batch in progress ends at the next denoising step."""
        switch = self._stops.pop(session_id, None) if session_id is not None else None
        if switch is not None:
            switch.set()

    # -- model work --------------------------------------------------------------------
    def _embed_pair(self, request, session: dict, file_keys=(None, None)):
        return (embed_input(self.engine, request.source, "source image", session.get("source"), file_keys[0]),
                embed_input(self.engine, request.target, "target image", session.get("target"), file_keys[1]))

    def _run_frame(self, request: FrameRequest, session: dict, on_step=None, file_keys=(None, None)):
        """Embed the inputs (reusing this session's entries) and render the request's frame (its
        alpha aimed first when it is an aim). ``on_step(step, total)`` runs after each denoising step.
        """
        src, tgt = self._embed_pair(request, session, file_keys)
        with self.engine.callback_on_step(on_step):
            frame = self.engine.render_frame(request, src.embedding, tgt.embedding)
        return frame, src, tgt

    def _run_sequence(self, request: SweepRequest, session: dict, out_dir, on_step=None):
        """Embed the inputs, then yield (RenderProgress, session entries) per chunk.

        The frames and files are `vslerp render`'s (`iter_render`); closing this generator
        stops after the chunk in progress. ``on_step(step, total)`` runs after each denoising
        step (and may raise `RenderStopped` to end the chunk there).
        """
        src, tgt = self._embed_pair(request, session)
        # strength < 1 starts every frame from the source's own latents: the image goes down whole.
        source = request.source if self._starts_from_image(request) else src.embedding
        events = iter_render(self.engine, request.with_inputs(source, tgt.embedding), out_dir,
                             _STUDIO_OUTPUTS)
        try:
            for event in self._stepped(events, on_step):
                yield event, {"source": src, "target": tgt}
        finally:
            events.close()

    def _run_path(self, request: PathRequest, out_dir, on_step=None):
        """Embed the keyframes, then yield (RenderProgress, None) per chunk of the path's render
        (`iter_render`, as `vslerp render --keyframes`); closing it stops after the chunk.
        ``on_step`` as in `_run_sequence`."""
        embeddings = [embed_input(self.engine, image, f"keyframe {k + 1}").embedding
                      for k, image in enumerate(request.keyframes)]
        if self._starts_from_image(request):  # every frame starts from the first keyframe's latents
            embeddings[0] = request.keyframes[0]
        events = iter_render(self.engine, request.with_keyframes(embeddings), out_dir, _STUDIO_OUTPUTS)
        try:
            for event in self._stepped(events, on_step):
                yield event, None
        finally:
            events.close()

    def _starts_from_image(self, request) -> bool:
        """Whether the request's frames start from an image's latents (strength < 1)."""
        return self.engine.settings_of(request.sampling).strength < 1.0

    def _stepped(self, events: Iterator, on_step) -> Iterator:
        """``events`` with each chunk's denoising steps reported to ``on_step``.

        The engine reports the steps of the calling thread only, and a streamed render may be
        resumed by another thread for each chunk: the report is set up around every chunk.
        """
        while True:
            with self.engine.callback_on_step(on_step):
                event = next(events, None)
            if event is None:
                return
            yield event

    # -- requests: parsed once, at the edge ----------------------------------------------------
    def frame_request(self, **values) -> FrameRequest:
        """The `FrameRequest` of the app's values (`FrameRequest.parse`'s keywords), or RequestError."""
        return FrameRequest.parse(self.engine, **values)

    def aim_request(self, **values) -> FrameRequest:
        """The gate of the app's Aim button: a conformity typed in, and a frame request the engine
        takes (`frame_request`'s keywords). The alpha itself is found where the frame renders
        (`frame`), so the model runs in one GPU call."""
        if AimAt.parse(self.engine, values.get("target_conformity")) is None:
            raise RequestError("Type the conformity to aim at first (e.g. 0.8).")
        request = self.frame_request(**values)
        end = at_an_end(request.theta)
        if end is not None:
            raise RequestError(f"Cannot aim: {end}, so alpha has no effect there. "
                               "Move theta between 0 and 1 first.")
        return request

    def sequence_request(self, **values) -> SweepRequest:
        """The `SweepRequest` of the app's sweep form (`SweepRequest.parse_studio`'s keywords and the
        sampling settings, `Sampling.parse`'s), at most `max_sequence_frames` frames; or RequestError."""
        sampling, values = _sampling_of(values)
        return SweepRequest.parse_studio(self.engine, sampling=sampling,
                                         max_frames=self.config.max_sequence_frames, **values)

    def path_request(self, *, keyframes, **values) -> PathRequest:
        """The `PathRequest` of the app's path form, or RequestError: every keyframe passes
        `check_input_image` first (None slots skipped: the API's unused keyframes)."""
        images = [k for k in keyframes or [] if k is not None]
        if MIN_KEYFRAMES <= len(images) <= MAX_KEYFRAMES:
            for k, image in enumerate(images):
                check_input_image(None, image, f"keyframe {k + 1}", self.config.max_file_bytes)
        sampling, values = _sampling_of(values)
        return PathRequest.parse_studio(self.engine, keyframes=images, sampling=sampling,
                                        max_frames=self.config.max_sequence_frames, **values)

    @staticmethod
    def frame_key(request: FrameRequest, file_keys: tuple[str, str]) -> tuple:
        """What decides a frame's pixels: the inputs' content (``file_keys``), theta, alpha (or the
        conformity it is aimed at), seed, quality and the settings it sets (the batch limit aside)."""
        sampling = request.sampling
        return (*file_keys, request.theta, request.alpha, request.seed, sampling.preview,
                tuple(sorted(sampling.overrides().items())))

    # -- whole requests ----------------------------------------------------------------
    def frame(self, session, request: FrameRequest, on_step: Callable[[int, int], None] | None = None):
        """One frame: (image, readouts, new session).

        A frame rendered before with the same inputs and settings comes from the frame
        cache at once (readouts ``cached`` true). ``on_step(step, total)`` reports the
        denoising steps of a frame that is rendered.
        """
        session = session if isinstance(session, dict) else {}
        try:  # each input file hashed once: for the frame cache and the session's embeddings
            file_keys = (file_key(request.source), file_key(request.target))
        except OSError:
            file_keys = (None, None)  # an unreadable path: the render below says what is wrong with it
        key = None if None in file_keys else self.frame_key(request, file_keys)
        hit = self.frames.get(key) if key is not None else None
        if hit is not None:
            image, readouts = hit
            return image, {**readouts, "cached": True}, session
        start = time.perf_counter()
        frame, src, tgt = self.run_frame(request, session, on_step, file_keys)
        readouts = frame_readouts(frame, src, tgt, self.engine.model, time.perf_counter() - start)
        readouts["cached"] = False
        if key is not None:
            self.frames.put(key, frame.image, readouts)
        return frame.image, readouts, {"source": src, "target": tgt}

    def sequence(self, session, request: SweepRequest, progress: Callable[[float, str], None] | None = None,
                 stop: threading.Event | None = None) -> Iterator[SequenceUpdate]:
        """A sweep, streamed: a `SequenceUpdate` after each batch, the last with every file.

        Each update's files stay on disk until the next update is asked for; when the
        generator ends (finished, failed or closed: a Stop) its work folder is removed, so
        nothing is left behind. A full disk is refused in plain words, without the server's
        paths. ``progress(fraction, text)`` is told where the render stands after every
        denoising step and batch (`RenderClock`); once ``stop`` is set, the batch in progress
        ends at its next step (`RenderStopped`).
        """
        session = session if isinstance(session, dict) else {}
        cleanup_workdirs(self.work_root)
        out_dir = new_workdir(self.work_root)
        total = len(request.pairs())
        clock = RenderClock(total, request.sampling.max_batch or self.engine.max_batch, progress, stop)
        on_step = clock.on_step if clock.watched else None
        events = self.run_sequence(request, session, out_dir, on_step=on_step)
        try:
            yield from _stream(events, out_dir, total, session, frame_caption, clock)
        finally:
            self._release(stop)

    def path(self, request: PathRequest, progress: Callable[[float, str], None] | None = None,
             stop: threading.Event | None = None) -> Iterator[SequenceUpdate]:
        """A path through keyframes, streamed as `sequence`: a `SequenceUpdate` after each batch,
        the last with every file; the work folder removed at the end. ``progress`` and ``stop``
        as in `sequence`."""
        cleanup_workdirs(self.work_root)
        out_dir = new_workdir(self.work_root)
        batch = request.sampling.max_batch or self.engine.max_batch
        clock = RenderClock(request.frames, batch, progress, stop)
        events = self.run_path(request, out_dir, on_step=clock.on_step if clock.watched else None)
        keyframes = len(request.keyframes)
        caption = lambda entry: path_caption(entry, keyframes)  # noqa: E731 (one line, used once)
        try:
            yield from _stream(events, out_dir, request.frames, None, caption, clock)
        finally:
            self._release(stop)


class RenderStopped(Exception):
    """A streamed render's Stop: raised at the next denoising step, so its batch ends there."""


class RenderClock:
    """Where a streamed render stands, in one line: its batch's denoising steps, the frames done,
    the time it has taken and an estimate of the time left.

    ``progress(fraction, text)`` hears of every step (`on_step`, from the render's thread) and
    every finished batch (`frames_done`); once ``stop`` is set, the next step raises `RenderStopped`.
    """

    def __init__(self, total: int, batch: int, progress: Callable[[float, str], None] | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic):
        self.total, self.batch = total, max(1, int(batch))
        self.progress, self.stop, self.clock = progress, stop, clock
        self.started = clock()
        self.done, self.step, self.steps = 0, 0, 0

    @property
    def watched(self) -> bool:
        """Whether anyone listens to the steps (a progress line or a Stop)."""
        return self.progress is not None or self.stop is not None

    @property
    def fraction(self) -> float:
        """The share of the render done, counting the batch in progress by its steps."""
        in_batch = min(self.batch, self.total - self.done) * (self.step / self.steps if self.steps else 0.0)
        return min(1.0, (self.done + in_batch) / self.total) if self.total else 1.0

    def text(self) -> str:
        elapsed = self.clock() - self.started
        batches = math.ceil(self.total / self.batch)
        parts = [f"{self.done} of {self.total} frames done"]
        if self.done < self.total:
            batch = f"batch {min(batches, self.done // self.batch + 1)} of {batches}"
            parts.insert(0, f"{batch}, step {self.step} of {self.steps}" if self.steps else batch)
        parts.append(f"{elapsed:.0f} s elapsed")
        if 0.05 <= self.fraction < 1 and elapsed >= 1:  # an estimate from 5% of the work on
            parts[-1] += f", about {elapsed * (1 - self.fraction) / self.fraction:.0f} s left"
        return " · ".join(parts)

    def on_step(self, step: int, steps: int) -> None:
        """The runner's step callback: tell ``progress``, or end the batch if stopped."""
        if self.stop is not None and self.stop.is_set():
            raise RenderStopped("the render was stopped")
        self.step, self.steps = step, steps
        self._report()

    def frames_done(self, done: int) -> None:
        self.done, self.step = done, 0
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.fraction, self.text())


def _stream(events, out_dir: Path, total: int, session, caption,
            clock: RenderClock | None = None) -> Iterator[SequenceUpdate]:
    """A render's events as `SequenceUpdate`s; ``events`` yield (RenderProgress, new session or None).

    The work folder is removed when this generator ends (finished, failed, closed or stopped);
    a full disk is refused in plain words, without the server's paths.
    """
    try:
        yield SequenceUpdate([], 0, total, None, session)
        for event, new_session in events:
            if clock is not None:
                clock.frames_done(event.done)
            gallery = [(str(out_dir / e["file"]), caption(e)) for e in event.frames]
            files = None if event.manifest is None else sequence_outputs(event.manifest, out_dir)
            yield SequenceUpdate(gallery, event.done, event.total, files,
                                 session if new_session is None else new_session)
    except RenderStopped:  # a Stop: the page has moved on; nothing to report
        return
    except (RenderError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in DISK_FULL:
            raise
        raise RequestError(files_message(e)) from None
    finally:
        events.close()
        shutil.rmtree(out_dir, ignore_errors=True)
