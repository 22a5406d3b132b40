"""Take a PNG of a running dashboard with Debian's chromium (no `playwright install`).

    python scripts/screenshot_dashboard.py --url http://127.0.0.1:8000 --store cdnow \
        --key "$KEY" --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--store", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(f"{args.url}/dashboard/{args.store}#key={args.key}")
        page.wait_for_function("() => document.body.dataset.updated !== undefined", timeout=30000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
