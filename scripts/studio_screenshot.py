"""The README's picture of the studio (docs/studio.png), made the way a visitor sees the page.

    python scripts/studio_screenshot.py                      # a tiny fixture (its frames are noise)
    python scripts/studio_screenshot.py --model karlo        # real weights (a GPU machine)

Starts `python app.py --model M` on a free port, opens it in Debian's chromium (Playwright)
at 1440 x 900, clicks the first example (it renders its frame), and stores the top of the
page scaled to 960 px wide as a palette PNG, so the file stays small in the repository.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, STORED_WIDTH = 1440, 900, 960


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "config", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"app.py did not answer at {url} in {seconds:.0f} s")


def _shoot(url: str, png: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.get_by_text("cat -> astronaut, half way, alpha 1").click()
        expect(page.locator("#readout")).to_contain_text("conformity", timeout=300_000)
        expect(page.locator("#readout")).not_to_contain_text("(preview)", timeout=300_000)
        page.evaluate("window.scrollTo(0, 0)")  # the page as it opens: the header, inputs and frame
        page.screenshot(path=str(png))
        browser.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="preset or pipeline directory (default: a tiny fixture written here)")
    p.add_argument("--out", default=str(ROOT / "docs" / "studio.png"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "tiny-karlo")
            subprocess.run([sys.executable, "-m", "vslerp_app", "fixture", "karlo", model], check=True,
                           cwd=ROOT)
        port = _free_port()
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
        proc = subprocess.Popen([sys.executable, "app.py", "--model", model, "--port", str(port),
                                 "--host", "127.0.0.1"], cwd=ROOT, env=env)
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_for(url, proc)
            raw = Path(tmp) / "page.png"
            _shoot(url, raw)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        with Image.open(raw) as im:
            small = im.convert("RGB").resize((STORED_WIDTH, round(im.height * STORED_WIDTH / im.width)),
                                             Image.Resampling.LANCZOS)
            small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
