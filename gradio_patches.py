"""Every place the studio reaches into Gradio's internals, and the start-up check that they hold.

Imported by `gate.py` and `app.py` only. The studio's gate (`gate.py`) says what a request may
carry; this module is the only one that replaces or reads a Gradio internal to enforce it,
and `check_gradio` (called first by `app.main` and `app.build_demo`) refuses to start on a Gradio outside
`TESTED_GRADIO` or whose internals these patches rely on have changed (`RELIED_ON`), naming
what changed, rather than serving with a gate that may no longer run.

What Gradio offers itself is used where it gives the same protection (`app.launch_options`):
``max_file_size`` bounds each uploaded file, ``allowed_paths=[]`` serves only uploads and
results, ``queue(max_size=...)`` bounds the whole queue, Starlette middleware passed through
``app_kwargs`` bounds request bodies and uploads (`gate.RequestBodyLimit`, `gate.UploadLimit`)
and answers cancels at once (`gate.CancelAtOnce`). A URL sent in place of an image is
downloaded by the file gate itself, with a byte bound (`gate.fetch_urls`), before Gradio's
own step, which then finds a file it stored (the image boxes' download hook of before is
gone). Three patches stay, none with a Gradio 6 mechanism that does the same (as of 6.31):

* `wrap_data_processing` (``Blocks.preprocess_data``/``postprocess_data`` of one page): the
  file gate. Gradio checks only file values that carry its ``meta`` and answers the rest,
  and a failed read or a full disk, with ``{"error": null}`` or a message that echoes the
  server's path. An event's ``validator=`` cannot stand in: it runs after the same
  preprocessing, in the same ``preprocess_data``.
* `replace_preprocess` (one component's ``preprocess``): the image boxes' checks before any
  decode (the stock ``Image.preprocess`` decodes an inline ``data:`` URL with Pillow first)
  and the number inputs' refusals naming the API parameter (the stock ones say only "Value
  1.5 is greater than maximum value 1." and let NaN through). A subclass would be Gradio's
  custom-component way, but ComponentMeta then writes a ``.pyi`` copy of the defining
  module beside it at import, and the page needs ``is_template`` to find its Svelte file.
* `wrap_queue_push` (the page's ``Queue.push``): Gradio bounds only the whole queue; the
  bounds per session and per client address refuse there, as a full queue does.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import gradio as gr
from gradio import data_classes, queueing
from gradio import utils as gradio_utils
from packaging.specifiers import SpecifierSet
from packaging.version import Version

# The Gradio releases the studio's tests ran green on; requirements.txt pins the same range
# (tests/test_app_api.py checks that they agree).
TESTED_GRADIO = SpecifierSet(">=6.20.0,<=6.31.0")


class GradioMismatchError(RuntimeError):
    """The installed Gradio is not one the gate was written and tested for."""


def _parameters(function) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def _assigned_in_init(cls, *attributes: str) -> bool:
    source = inspect.getsource(cls.__init__)
    return all(f"self.{a} " in source or f"self.{a}:" in source for a in attributes)


# What each patch relies on: a description and whether the installed Gradio still has it.
RELIED_ON: dict[str, Callable[[], bool]] = {
    "Blocks.preprocess_data(self, block_fn, inputs, state, explicit_call)":
        lambda: _parameters(gr.Blocks.preprocess_data) == ("self", "block_fn", "inputs", "state",
                                                             "explicit_call"),
    "Blocks.postprocess_data(self, block_fn, predictions, state)":
        lambda: _parameters(gr.Blocks.postprocess_data) == ("self", "block_fn", "predictions", "state"),
    "BlockFunction.inputs (the event's input components)":
        lambda: _assigned_in_init(gr.blocks.BlockFunction, "inputs"),
    "Component.preprocess(self, payload) of Image, Slider and Number":
        lambda: all(_parameters(c.preprocess) == ("self", "payload")
                    for c in (gr.Image, gr.Slider, gr.Number)),
    "Block._id, Component.stateful, Block.GRADIO_CACHE":
        lambda: _assigned_in_init(gr.blocks.Block, "_id", "GRADIO_CACHE") and hasattr(gr.Image, "stateful"),
    "FileData.path and FileData.url":
        lambda: {"path", "url"} <= set(data_classes.FileData.model_fields),
    "utils.get_upload_folder()": lambda: _parameters(gradio_utils.get_upload_folder) == (),
    "Blocks._queue (the page's queueing.Queue, set by Blocks.queue)":
        lambda: "self._queue = queueing.Queue(" in inspect.getsource(gr.Blocks.queue),
    "Queue.push(self, body, request, username) -> (ok, message, kind)":
        lambda: _parameters(queueing.Queue.push) == ("self", "body", "request", "username"),
    "Queue.event_queue_per_concurrency_id, EventQueue.queue, Event.session_hash and .request":
        lambda: (_assigned_in_init(queueing.Queue, "event_queue_per_concurrency_id")
                 and _assigned_in_init(queueing.EventQueue, "queue")
                 and _assigned_in_init(queueing.Event, "session_hash", "request")),
    "PredictBodyInternal.session_hash":
        lambda: "session_hash" in data_classes.PredictBodyInternal.model_fields,
    "CancelBody's fields session_hash, fn_index, event_id (POST /cancel)":
        lambda: set(data_classes.CancelBody.model_fields) == {"session_hash", "fn_index", "event_id"},
}


def changed_internals() -> list[str]:
    """The entries of `RELIED_ON` the installed Gradio no longer has (empty when all hold)."""
    changed = []
    for name, holds in RELIED_ON.items():
        try:
            ok = holds()
        except (AttributeError, TypeError, ValueError, OSError):  # gone, or not inspectable
            ok = False
        if not ok:
            changed.append(name)
    return changed


def check_gradio(version: str | None = None) -> None:
    """Refuse to start on a Gradio the gate was not tested with, or whose internals changed.

    Raises GradioMismatchError naming the installed release and the tested range, or each
    internal that changed; returns nothing when all is as written for.
    """
    version = version or gr.__version__
    fix = "install a tested release: pip install -r requirements.txt"
    if Version(version) not in TESTED_GRADIO:
        raise GradioMismatchError(f"vSLERP Studio's request gate is tested with gradio {TESTED_GRADIO}; "
                                  f"this is gradio {version}: {fix}.")
    changed = changed_internals()
    if changed:
        raise GradioMismatchError(f"gradio {version} changed what vSLERP Studio's request gate relies on "
                                  f"({'; '.join(changed)}): {fix}.")


# -- the patches --------------------------------------------------------------------------------
def replace_preprocess(component, preprocess: Callable) -> None:
    """``component`` (this instance only) hands ``preprocess`` the payload its stock one would get."""
    component.preprocess = preprocess


def wrap_data_processing(demo: gr.Blocks, preprocess: Callable, postprocess: Callable) -> None:
    """Every event of ``demo`` reads its request through ``preprocess(blocks, payloads, stock)``
    and stores its results through ``postprocess(stock)``: ``blocks`` are the event's input
    components, ``payloads`` their values as sent, and ``stock()`` Gradio's own step (awaitable)."""
    stock_pre, stock_post = demo.preprocess_data, demo.postprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        def stock():
            return stock_pre(block_fn, inputs, state, explicit_call)

        return await preprocess(block_fn.inputs, inputs, stock)

    async def postprocess_data(block_fn, predictions, state):
        return await postprocess(lambda: stock_post(block_fn, predictions, state))

    demo.preprocess_data, demo.postprocess_data = preprocess_data, postprocess_data


def waiting(demo: gr.Blocks) -> Iterator[tuple[str | None, dict | None]]:
    """(session hash, ASGI scope or None) of each request waiting in ``demo``'s queue."""
    for group in demo._queue.event_queue_per_concurrency_id.values():
        for event in group.queue:
            yield event.session_hash, getattr(getattr(event, "request", None), "scope", None)


def wrap_queue_push(demo: gr.Blocks, refusal: Callable[[str | None, dict], str | None]) -> None:
    """A request joins ``demo``'s queue only if ``refusal(session_hash, scope)`` is None; its
    words otherwise answer the request, as a full queue's do."""
    queue = demo._queue
    push = queue.push

    async def bounded_push(body, request, username):
        problem = refusal(body.session_hash, request.scope)
        if problem is not None:
            return False, problem, "queue_full"
        return await push(body, request, username)

    queue.push = bounded_push
