"""Screenshot of a running app.py with photos dropped in it: how docs/app.png is made.

    python app.py --cfg configs/demo_cpu.yaml &     # or: make app
    python scripts/app_screenshot.py --images demo/dataset/test/000001/a.jpg ... --output docs/app.png

Drives Debian's Chromium (``make browser``) through Playwright, as tests/test_app.py does.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--images", nargs="+", type=Path, required=True)
    parser.add_argument("--output", type=Path, default=Path("docs/app.png"))
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 800})
        page.goto(args.url)
        page.locator("input[type=file]").first.set_input_files([str(p) for p in args.images])
        page.wait_for_function(f"document.querySelectorAll('.leaf-card').length >= {len(args.images)}",
                               timeout=300_000)
        page.wait_for_timeout(1000)  # the CAM pictures finish decoding
        page.screenshot(path=str(args.output), full_page=True)
        browser.close()
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
