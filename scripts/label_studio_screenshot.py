"""A screenshot of one Label Studio task as a reviewer sees it (for docs/loop.md).

Needs Playwright and a Chromium (not project dependencies):
    pip install playwright   # in any venv, e.g. .venv-label-studio; Chromium from the system
    python scripts/label_studio_screenshot.py --url http://127.0.0.1:8080 --user EMAIL \
        --password PW --project 2 --task 3 --out docs/label-studio-task.png
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--project", type=int, required=True)
    ap.add_argument("--task", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(f"{a.url}/user/login/")
        page.fill("input[name=email]", a.user)
        page.fill("input[name=password]", a.password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{a.url}/projects/{a.project}/data?task={a.task}")
        page.wait_for_selector("text=What the LLMs answered", timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=a.out)
        browser.close()


if __name__ == "__main__":
    main()
