"""Take docs/web-chat.png: serve a chat checkpoint with `gptforge serve` on 127.0.0.1, ask it a few
questions in the web page (greedy, in headless chromium through playwright) and keep the screenshot.

    python scripts/web_chat_screenshot.py CHECKPOINT docs/web-chat.png --name NAME "question" ...

The page's own test (tests/serve/test_web_page.py) checks what the page does; this only pictures it
with a trained model.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time

FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-gpu"]


def start_server(checkpoint: str, name: str) -> tuple[subprocess.Popen, str]:
    """`gptforge serve` on a free local port, and its base URL once it listens."""
    server = subprocess.Popen([sys.executable, "-m", "gptforge", "serve", "--checkpoint", checkpoint, "--port", "0",
                               "--model-name", name], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    for line in server.stdout:
        if found := re.search(r"http://127\.0\.0\.1:\d+", line):
            return server, found.group(0)
        if time.monotonic() > deadline:
            break
    server.terminate()
    raise SystemExit("the server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("questions", nargs="+")
    parser.add_argument("--name", default="chat", help="the model's name the page shows")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    server, url = start_server(args.checkpoint, args.name)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_context(viewport={"width": 900, "height": 560}).new_page()
            page.goto(url + "/")
            page.wait_for_function(f"document.getElementById('model').textContent.includes({args.name!r})")
            for n, question in enumerate(args.questions, start=1):
                page.fill("#temperature", "0")
                page.fill("#max-tokens", "20")
                page.fill("#prompt", question)
                page.press("#prompt", "Enter")
                page.wait_for_function(
                    f"document.querySelectorAll(\".msg.assistant[data-done='1']\").length === {n}", timeout=60_000)
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
