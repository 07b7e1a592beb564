"""The studio's gate: what a request may carry before any handler of `app.py` sees it.

Imported by `app.py` only (Gradio lives here and there, never in `vslerp_app`); where a rule
needs a hook inside Gradio, `gradio_patches` places it (that module lists every such hook,
why Gradio offers none of its own, and checks them at start-up). One rule per hole, each
applied whatever the request's shape:

* Files (`install_file_gate`): a file in any input (an image box, the keyframe strip, the
  current frame; with or without Gradio's ``meta``, for every event, the page's private
  ones included) is accepted only as a regular file inside the folders Gradio writes
  uploads to, symlinks resolved; every other path gets one message that does not depend
  on the file. A bare string where a file belongs, and a request Gradio cannot read, get
  a plain message instead of ``{"error": null}``; so does a full disk while Gradio copies
  a result to its cache.
* Image boxes (`checked_image`): uploads, inline ``data:`` URLs and URLs meet the same
  checks (`vslerp_app.service.check_input_image`) before anything decodes them.
* Request bodies (`RequestBodyLimit`) and uploads (`UploadLimit`): bounded in bytes per
  request, in files per request and in bytes per client address per hour; what is not an
  image is refused as it arrives.
* The queue (`bound_waiting`): at most so many requests waiting per session and per client
  address, the address taken from X-Forwarded-For only behind a proxy the operator trusts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
import uuid
from collections import deque
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils
from gradio.exceptions import InvalidPathError

import gradio_patches as patches
from vslerp_app import service as ui
from vslerp_app.images import ImageInputError, check_image

# Components whose values are files: their payloads pass the file gate.
FILE_COMPONENTS = (gr.Image, gr.Gallery, gr.File, gr.Video)
_META = {"_type": "gradio.FileData"}
_SUFFIXES = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif", "JPEG2000": "jp2"}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# -- files: only what Gradio itself stored ---------------------------------------------------
def upload_roots() -> list[Path]:
    """The folders Gradio writes uploads (and its cache of results) to, resolved.

    Read at each check: GRADIO_TEMP_DIR may be set after this module is imported.
    """
    return [Path(os.path.realpath(gradio_utils.get_upload_folder()))]


def stored_by_gradio(path: str) -> bool:
    """Whether ``path`` is a regular file inside `upload_roots`, after every symlink is resolved.

    Nothing else is told apart: a missing file, a directory, a file outside and a name
    Python cannot even stat all answer False, so a refusal says nothing about the file.
    """
    try:
        real = Path(os.path.realpath(path))
        inside = any(real.is_relative_to(root) for root in upload_roots())
        return inside and stat.S_ISREG(real.stat().st_mode)
    except (OSError, ValueError, TypeError):
        return False


def path_refusal(role: str) -> gr.Error:
    """The one refusal of a file path the server did not store; it names only the input."""
    return gr.Error(f"The {role} must be uploaded (or sent inline as a data: URL); a path on the server "
                    "is not accepted.", print_exception=False)


def _form_refusal(role: str, got) -> gr.Error:
    kind = "a bare string" if isinstance(got, str) else f"a {type(got).__name__}"
    return gr.Error(f"The {role} must be sent as a file: upload it (POST /gradio_api/upload) and send "
                    '{"path": <the path it answers>, "meta": {"_type": "gradio.FileData"}}, as '
                    f"gradio_client's handle_file does; got {kind}.", print_exception=False)


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _file_dicts(value):
    """Every dict in ``value`` that stands for a file (it has a "path" or a "url")."""
    if isinstance(value, dict):
        if "path" in value or "url" in value:
            yield value
        else:
            for item in value.values():
                yield from _file_dicts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _file_dicts(item)


def check_files(payload, role: str, downloads: bool, many: bool) -> None:
    """Refuse ``payload`` (one input's value as sent) unless every file in it was stored by Gradio.

    ``downloads``: the input fetches http(s) URLs itself (a `checked_image`), so a URL may
    stand in a "path"; ``many``: the value is a list (a gallery). Every file dict is given
    Gradio's ``meta`` so its own checks run on it as well.
    Raises gr.Error; returns nothing.
    """
    if payload is None:
        return
    if not isinstance(payload, (list, tuple) if many else dict):
        raise _form_refusal(role, payload)
    for d in _file_dicts(payload):
        path = d.get("path")
        if path is None:
            if not downloads:  # only an image box reads an inline data: URL without a path
                raise path_refusal(role)
            continue
        if not isinstance(path, str):
            raise _form_refusal(role, path)
        if not (downloads and _is_url(path)) and not stored_by_gradio(path):
            raise path_refusal(role)
        d["meta"] = dict(_META)


async def fetch_urls(payload, role: str, max_bytes: int, cache_dir: Path) -> None:
    """Download each http(s) URL standing in a file's "path" of ``payload`` (`bounded_download`)
    and put the file it stored there instead, so Gradio's own step finds a file it stored
    and fetches nothing itself (its download has no byte bound)."""
    for d in _file_dicts(payload):
        if isinstance(d.get("path"), str) and _is_url(d["path"]):
            d["path"] = await bounded_download(d["path"], cache_dir, max_bytes, role)


class FileGate:
    """The roles of a page's file inputs, by component id, and the inputs that download URLs
    (with their byte limits); `install_file_gate` reads them."""

    def __init__(self):
        self.roles: dict[int, str] = {}
        self.downloads: dict[int, int] = {}

    def role(self, block) -> str:
        return self.roles.get(block._id) or str(getattr(block, "label", None) or "file").lower()


GATE = FileGate()


def install_file_gate(demo: gr.Blocks, gate: FileGate = GATE) -> None:
    """Every event of ``demo`` checks its file inputs first (`check_files`) and downloads the
    URLs an image box was sent (`fetch_urls`), and its failures to read a request or to store
    a result answer in plain words, never ``{"error": null}``."""

    async def preprocess(blocks, payloads, stock):
        for block, payload in zip(blocks, payloads, strict=False):
            if isinstance(block, FILE_COMPONENTS) and not block.stateful:
                role, max_bytes = gate.role(block), gate.downloads.get(block._id)
                check_files(payload, role, max_bytes is not None, many=isinstance(block, gr.Gallery))
                if max_bytes is not None:
                    await fetch_urls(payload, role, max_bytes, Path(block.GRADIO_CACHE))
        try:
            return await stock()
        except InvalidPathError:  # Gradio's own check, behind ours: the same words
            raise path_refusal("image") from None
        except gr.Error:
            raise
        except Exception as e:  # pydantic's ValidationError and the like: a value of the wrong form
            if isinstance(e, OSError) and e.errno in _DISK_FULL:
                raise _disk_full() from None
            raise gr.Error(f"This request could not be read ({type(e).__name__}): send each value in "
                           "the form the API page shows (gradio_client's view_api).",
                           print_exception=False) from None

    async def postprocess(stock):
        try:
            return await stock()
        except OSError as e:
            raise (_disk_full() if e.errno in _DISK_FULL else
                   gr.Error("The server could not store this result; please try again later.",
                            print_exception=False)) from None

    patches.wrap_data_processing(demo, preprocess, postprocess)


def _disk_full() -> gr.Error:
    return gr.Error("The server ran out of disk space while storing this result; nothing was kept. "
                    "Try again later.", print_exception=False)


# -- image boxes: one check for uploads, inline data and URLs ---------------------------------------
def checked_image(role: str, max_bytes: int, gate: FileGate = GATE, **kwargs) -> gr.Image:
    """An image input that checks what arrives before anything decodes it.

    Uploads, pastes and webcam shots arrive as uploaded files; an API call may also send
    an inline ``data:`` URL (which the stock component decodes and re-saves with Pillow
    before any check of ours) or a URL (which Gradio downloads whole). The instance's
    preprocess is replaced (`gradio_patches.replace_preprocess`) by
    `vslerp_app.service.check_input_image` (byte size, format allow-list, pixel count from
    the header; an upload's messages) and it returns the file's path, decoding nothing; URLs
    are downloaded by the file gate, with a byte cap (`fetch_urls`). Why not a gr.Image
    subclass: see `gradio_patches`.
    """
    image = gr.Image(**kwargs)
    gate.roles[image._id] = role
    gate.downloads[image._id] = max_bytes

    def preprocess(payload):
        if payload is None:
            return None
        url = payload.url if isinstance(payload.url, str) and payload.url.startswith("data:") else None
        if url is None and not payload.path:
            problem = ("came as a web address in \"url\" alone: send {\"path\": URL} (gradio_client's "
                       "handle_file(URL) does) or upload the file" if payload.url
                       else "is missing: no file was sent")
            raise gr.Error(f"The {role} {problem}.", print_exception=False)
        if url is None and not stored_by_gradio(payload.path):  # the file gate's rule, checked again
            raise path_refusal(role)
        try:
            inline = ui.check_input_image(url, payload.path, role, max_bytes)
        except ui.RequestError as e:
            raise gr.Error(str(e), print_exception=False) from None
        if inline is None:
            return str(payload.path)
        data, header = inline
        folder = Path(image.GRADIO_CACHE) / hashlib.sha256(data).hexdigest()[:32]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"inline.{_SUFFIXES.get(header.format, header.format.lower())}"
        if not path.is_file():
            path.write_bytes(data)
        return str(path)

    patches.replace_preprocess(image, preprocess)
    return image


def name_file_input(component, role: str, gate: FileGate = GATE):
    """Name a file input (the keyframe strip, the current frame) in the file gate's refusals."""
    gate.roles[component._id] = role
    return component


async def bounded_download(url: str, cache_dir: Path, max_bytes: int, role: str, transport=None) -> str:
    """Download an image URL to the cache, refusing non-public hosts and files over max_bytes.

    Gradio's own download (safehttpx) reads the whole response into memory; this one
    streams it to a file of its own and stops at ``max_bytes``, with the refusal an upload
    gets; the finished file is moved into place, so two requests for one URL never write
    the same file. The host must resolve to a public address (safehttpx's check, pinned
    for the request) unless a ``transport`` is given.
    """
    import httpx
    import safehttpx

    def refuse(problem: str) -> gr.Error:
        return gr.Error(f"The {role} {problem}.", print_exception=False)

    if transport is None:
        try:
            verified_ip = await safehttpx.async_validate_url(httpx.URL(url).host)
            transport = safehttpx.AsyncSecureTransport(verified_ip)
        except Exception:
            raise refuse("could not be downloaded: its host cannot be reached or is not public") from None
    folder = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32]
    folder.mkdir(parents=True, exist_ok=True)
    path, partial, received = folder / "download", folder / f".download.{uuid.uuid4().hex}.partial", 0
    too_large = f"is too large; files up to {max_bytes / 2**20:g} MB are accepted"
    try:
        async with httpx.AsyncClient(transport=transport, timeout=30) as client, \
                client.stream("GET", url) as r:
            if r.status_code != 200:
                raise refuse(f"could not be downloaded (the server answered {r.status_code})")
            if int(r.headers.get("content-length") or 0) > max_bytes:
                raise refuse(too_large)
            with open(partial, "wb") as f:
                async for chunk in r.aiter_bytes():
                    received += len(chunk)
                    if received > max_bytes:
                        raise refuse(too_large)
                    f.write(chunk)
        os.replace(partial, path)
    except gr.Error:
        partial.unlink(missing_ok=True)
        raise
    except httpx.HTTPError as e:
        partial.unlink(missing_ok=True)
        raise refuse(f"could not be downloaded ({type(e).__name__})") from None
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise (_disk_full() if e.errno in _DISK_FULL else refuse("could not be stored")) from None
    return str(path)


# -- who is asking: the client's address ------------------------------------------------------------
def client_address(scope: dict, trusted: frozenset[str] = frozenset()) -> str:
    """The address a request comes from: the connection's peer, or, when that peer is a proxy
    the operator trusts (``trusted``: its addresses, or "*" for whatever connects, as on a
    Space where only the proxy can), the last X-Forwarded-For hop that is not a trusted proxy.

    A client cannot choose its address by sending X-Forwarded-For itself: the header is read
    only from a trusted peer, and only the hops that peer (and the proxies before it) added.
    """
    peer = (scope.get("client") or ("unknown", 0))[0]
    if "*" not in trusted and peer not in trusted:
        return peer
    forwarded = b",".join(v for k, v in scope.get("headers") or [] if k == b"x-forwarded-for")
    hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0] if hops else peer


def trusted_proxies(value: str | None) -> frozenset[str]:
    """The --trusted-proxies option: addresses separated by commas, or "*"; "" trusts none."""
    return frozenset(p.strip() for p in (value or "").split(",") if p.strip())


# -- bounded request bodies and uploads --------------------------------------------------------------
async def _answer(send, status: int, message: str, plain: bool = False) -> None:
    """An HTTP refusal: JSON {"detail": ...} as FastAPI answers, or ``plain`` text as Gradio's
    upload route does (its page shows the text in a toast: "HTTP 415: The file ...")."""
    body = message.encode() if plain else json.dumps({"detail": message}).encode()
    kind = b"text/plain; charset=utf-8" if plain else b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope) -> int | None:
    length = dict(scope.get("headers") or []).get(b"content-length")
    return int(length) if length is not None and length.isdigit() else None


def _bounded(receive, max_bytes: int):
    """``receive`` that ends the request (a disconnect) once its body passes ``max_bytes``."""
    received = 0

    async def bounded_receive():
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        return {"type": "http.disconnect"} if received > max_bytes else message

    return bounded_receive


class RequestBodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused (413) before it is read.

    Inline images come inside the JSON body of an API call; without a bound, a huge body
    would be parsed into memory before any check. Uploads are bounded by `UploadLimit`.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].endswith("/upload"):
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            return await _answer(send, 413, "The request is too large.")
        return await self.app(scope, _bounded(receive, self.max_bytes), send)


class UploadQuota:
    """Bytes each client address stored through uploads in the last ``window_s`` seconds.

    Gradio keeps uploads for an hour (the page's delete_cache), so an hour's bytes per
    address are what one address can hold on the disk at once. Thread-safe enough for one
    event loop: every call is synchronous.
    """

    def __init__(self, max_bytes: int, window_s: float = 3600.0):
        self.max_bytes, self.window_s = max_bytes, window_s
        self._spent: dict[str, deque] = {}

    def used(self, address: str) -> int:
        spent = self._spent.setdefault(address, deque())
        while spent and spent[0][0] < time.monotonic() - self.window_s:
            spent.popleft()
        return sum(n for _, n in spent)

    def spend(self, address: str, n: int) -> None:
        self.used(address)
        self._spent[address].append((time.monotonic(), n))


class UploadLimit:
    """ASGI middleware over Gradio's upload route (POST .../upload), which the body limit skips.

    One request: at most ``max_request_bytes`` of body (one largest file and the form's
    overhead) and ``max_files`` files; one client address (`client_address`): at most
    `UploadQuota.max_bytes` an hour. What is not an image is refused as it arrives, from its
    first bytes (`vslerp_app.images.check_image`: format and header, nothing decoded), and
    a refused request keeps nothing on the disk.
    """

    def __init__(self, app, max_request_bytes: int, max_files: int, quota: UploadQuota,
                 trusted: frozenset[str] = frozenset()):
        self.app, self.max_request_bytes, self.max_files = app, max_request_bytes, max_files
        self.quota, self.trusted = quota, trusted

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/upload"):
            return await self.app(scope, receive, send)
        address, length = client_address(scope, self.trusted), _content_length(scope)
        if length is not None and length > self.max_request_bytes:
            limit = self.max_request_bytes / 2**20
            return await _answer(send, 413, f"An upload request may hold up to {limit:.0f} MB; "
                                            "send one image at a time.", plain=True)
        used = self.quota.used(address)
        if used + (length or 0) > self.quota.max_bytes:
            return await _answer(send, 429, f"This address has uploaded {_kb(used)} in the last hour; "
                                            f"the limit is {_kb(self.quota.max_bytes)}. Try again later.",
                                 plain=True)
        self.quota.spend(address, length or 0)  # held while it arrives, so parallel requests count
        answer = []

        async def keep(message):
            answer.append(message)

        await self.app(scope, _bounded(receive, self.max_request_bytes), keep)
        status, body = answer[0].get("status"), b"".join(m.get("body", b"") for m in answer[1:])
        stored = _stored_paths(body) if status == 200 else []
        refusal = self._refusal(stored)
        self.quota.spend(address, sum(_size(p) for p in stored) - (length or 0))
        if refusal is not None:
            for path in stored:
                Path(path).unlink(missing_ok=True)
            self.quota.spend(address, -sum(_size(p) for p in stored))
            return await _answer(send, *refusal, plain=True)
        for message in answer:
            await send(message)

    def _refusal(self, stored: list[str]) -> tuple[int, str] | None:
        if len(stored) > self.max_files:
            return 413, (f"An upload request may hold up to {self.max_files} files; this one held "
                         f"{len(stored)}.")
        for path in stored:
            try:
                check_image(path, name=Path(path).name)
            except ImageInputError as e:
                return 415, f"The file {e.name} {e.problem}."
        return None


def _kb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


def _stored_paths(body: bytes) -> list[str]:
    try:
        paths = json.loads(body)
    except ValueError:
        return []
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# -- the queue: bounded per session and per address -------------------------------------------------
def bound_waiting(demo: gr.Blocks, per_session: int, per_address: int,
                  trusted: frozenset[str] = frozenset()) -> None:
    """One session (a browser tab, a gradio_client Client) may have at most ``per_session``
    requests waiting, and one client address (`client_address`) at most ``per_address``, so
    neither one client nor one address sending a fresh session with each request can fill the
    queue and shut everyone else out.

    Gradio bounds only the whole queue (`queue(max_size=...)`); the queue's push is wrapped
    on this page (`gradio_patches.wrap_queue_push`) and refuses like a full queue.
    """

    def refusal(session_hash: str | None, scope: dict) -> str | None:
        address = client_address(scope, trusted)
        waiting = list(patches.waiting(demo))
        mine = sum(session == session_hash for session, _ in waiting) if session_hash else 0
        theirs = sum(other is not None and client_address(other, trusted) == address for _, other in waiting)
        if mine >= per_session:
            return f"You already have {mine} requests waiting; wait for one to finish."
        if theirs >= per_address:
            return f"Your address already has {theirs} requests waiting; wait for one to finish."
        return None

    patches.wrap_queue_push(demo, refusal)


# -- cancel: answered at once ------------------------------------------------------------------------
class CancelAtOnce:
    """ASGI middleware: POST .../cancel answers at once; Gradio's cancel goes on behind it.

    Gradio's own route waits until the running event stops, which for a render is after the
    batch in progress (seconds to minutes on a GPU), so gradio_client's ``job.cancel()``
    timed out although the cancel worked. Here the request is read, answered
    ``{"success": true}`` and handed to Gradio's route in the background; the batch
    finishes there, and the stream closes as before.
    """

    def __init__(self, app):
        self.app = app
        self._running: set = set()  # the background cancels, kept until they end

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/cancel"):
            return await self.app(scope, receive, send)
        import asyncio

        body, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        replayed = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replay():
            return replayed.pop() if replayed else {"type": "http.disconnect"}

        async def discard(message):
            return None

        if not _cancel_body(replayed[0]["body"]):  # Gradio's route says what is wrong with it, at once
            return await self.app(scope, replay, send)
        task = asyncio.create_task(self.app(scope, replay, discard))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        payload = b'{"success": true}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _cancel_body(body: bytes) -> bool:
    """Whether ``body`` is a cancel request Gradio's route will take (its CancelBody's fields)."""
    try:
        fields = json.loads(body)
    except ValueError:
        return False
    return isinstance(fields, dict) and {"session_hash", "fn_index", "event_id"} <= set(fields)
