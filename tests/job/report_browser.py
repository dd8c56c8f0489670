"""Open a run report in Debian's headless Chromium, driven by Playwright (which never downloads a browser here).

    python tests/job/report_browser.py REPORT.html SCREENSHOT.png [--width 1200] [--clip-height 2000] [--colors 128]

makes the README's screenshot (docs/report.png: --width 1100 --clip-height 2310 --colors 128); the report tests use :func:`open_browser` and :func:`open_report`. Every request the
page makes other than for the report file itself is refused and recorded, so a test can prove the page needs no
network. ``make test`` installs Chromium (``CHROMIUM``, default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Running as root in a container without a GPU or network: no sandbox, no GPU, and none of Chromium's own calls home
# (which this machine's closed network refuses, many at a time).
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--no-first-run", "--disable-default-apps")
VIEWPORT = {"width": 1200, "height": 900}


@contextlib.contextmanager
def open_browser() -> Iterator:
    """A headless Chromium with a fresh profile (Playwright makes a new user-data-dir per launch)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise FileNotFoundError(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium package, "
                                "or set CHROMIUM to another Chromium binary")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_report(browser, report: Path) -> Iterator[tuple[object, list[str]]]:
    """The report loaded in a new page, and the list of other URLs the page asked for (all refused)."""
    page_url = report.resolve().as_uri()
    refused: list[str] = []

    def refuse_all_but_the_page(route) -> None:
        if route.request.url == page_url:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.route("**/*", refuse_all_but_the_page)
        page.goto(page_url, wait_until="load")
        yield page, refused
    finally:
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("screenshot", type=Path)
    parser.add_argument("--width", type=int, default=VIEWPORT["width"])
    parser.add_argument("--clip-height", type=int, help="keep only the top of the page (default: the whole page)")
    parser.add_argument("--colors", type=int, help="reduce the PNG to this many colours (a smaller file)")
    args = parser.parse_args()
    with open_browser() as browser, open_report(browser, args.report) as (page, _):
        page.set_viewport_size({"width": args.width, "height": VIEWPORT["height"]})
        clip = None
        if args.clip_height:
            clip = {"x": 0, "y": 0, "width": args.width, "height": args.clip_height}
        page.screenshot(path=str(args.screenshot), full_page=True, clip=clip)
    if args.colors:
        from PIL import Image

        with Image.open(args.screenshot) as shot:
            reduced = shot.convert("RGB").quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT,
                                                   dither=Image.Dither.NONE)
        reduced.save(args.screenshot, optimize=True)


if __name__ == "__main__":
    main()
