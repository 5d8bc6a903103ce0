"""The README's picture of `hifiedit serve`: the page in headless Chromium after one edit of a
test-split example, as a small PNG.

    python scripts/screenshot_serve.py --out docs/serve.png [--edit light-to-dark] [--force]
    python scripts/screenshot_serve.py --url http://127.0.0.1:7860/ ...   # a running `hifiedit serve`

Needs Debian's chromium and chromium-driver (`make browser`) and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from hifiedit.errors import HifieditError
from hifiedit.serve import EditService, launch, openmoji_examples, upload_folder

# Chromium on a machine with no display and no network: nothing starts that would phone home.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def screenshot(url: str, edit: str, size: tuple[int, int]) -> bytes:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        raise HifieditError("chromium and chromedriver are needed (`make browser` installs them).")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in (*CHROMIUM_FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        wait = WebDriverWait(browser, 300)
        browser.get(url)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#example input"))
        browser.find_element(By.CSS_SELECTOR, "#example input").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "li[data-testid=dropdown-option]"))
        browser.find_elements(By.CSS_SELECTOR, "li[data-testid=dropdown-option]")[0].click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#source img"))
        for box in browser.find_elements(By.CSS_SELECTOR, "#edits input[type=checkbox]"):
            if box.is_selected() != (box.get_attribute("name") == edit):
                box.click()
        browser.find_element(By.ID, "run").click()
        wait.until(lambda b: " steps" in b.find_element(By.ID, "info").text)
        # Clicking scrolled the button into view; the picture starts at the page's title.
        browser.execute_script("document.querySelector('h2').scrollIntoView({block: 'start'})")
        return browser.get_screenshot_as_png()
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def small_png(png: bytes, colours: int = 96) -> bytes:
    """A palette PNG: the page is flat colours and a few small pictures."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colours, dither=Image.Dither.NONE)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--edit", default="light-to-dark", help="the shipped edit shown")
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--height", type=int, default=760)
    p.add_argument("--url", help="shoot this running `hifiedit serve` instead of starting one")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    args = p.parse_args()
    out = Path(args.out)
    try:
        if out.exists() and not args.force:
            raise HifieditError(f"{out} exists; pass --force to overwrite it.")
        size = (args.width, args.height)
        if args.url:
            png = small_png(screenshot(args.url, args.edit, size))
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            with upload_folder():
                service = EditService("default", "cpu", 1, openmoji_examples(2))
                app = launch(service, "127.0.0.1", port, block=False)
                try:
                    png = small_png(screenshot(f"http://127.0.0.1:{port}/", args.edit, size))
                finally:
                    app.close()
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        tmp.write_bytes(png)
        os.replace(tmp, out)
    except HifieditError as e:
        print(f"screenshot_serve: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(png) / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
