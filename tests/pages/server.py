"""Start the workbench the way a user does (`deepscope serve`) on a free loopback port, and a headless chromium."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/status", timeout=5) as response:
        return json.load(response)


@contextmanager
def workbench(
    workspace: Path,
    models: Sequence[str] = (),
    extra: Sequence[str] = (),
    timeout: float = 300,
    pythonpath: Path | None = None,
) -> Iterator[str]:
    """`deepscope serve [models] --workspace workspace [extra]` in a subprocess; yields its base URL once every
    model's workspace scan has ended. The server's output goes to workspace/serve.log (shown when it fails).
    `pythonpath`: a folder the server imports from too (for a `python:module:factory` model)."""
    port = free_port()
    log_path = workspace / "serve.log"
    workspace.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "deepscope", "serve", *models, "--port", str(port), "--no-browser"]
    command += ["--workspace", str(workspace), *extra]
    paths = [str(ROOT / "src"), *([str(pythonpath)] if pythonpath else [])]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=environment)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"deepscope serve exited with {process.returncode}:\n{log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"deepscope serve was not ready in {timeout} s:\n{log_path.read_text()}")
            try:
                models_state = status(base)["models"]
            except OSError:
                models_state = None
            if models_state and all(
                m["workspace"]["state"] in ("ready", "none", "failed") for m in models_state
            ):
                break
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_chromium(playwright):
    """Debian's chromium, headless (Playwright's own browser download is not used)."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@contextmanager
def chromium() -> Iterator:
    """A headless chromium for a module of browser tests, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@contextmanager
def opened_workbench(browser, base: str) -> Iterator:
    """A fresh browser context on the workbench at ``base``; on leaving, the page must have raised no error."""
    from pages.base import Workbench

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    workbench_page = Workbench(page, base)
    yield workbench_page
    context.close()
    assert workbench_page.errors == [], f"the page raised: {workbench_page.errors}"


def get_json(base: str, path: str):
    """The server's JSON answer to ``GET path``."""
    with urllib.request.urlopen(base + path, timeout=120) as response:
        return json.load(response)


def get_array(base: str, path: str):
    """The server's binary array answer to ``GET path``: (array, header)."""
    from deepscope.app.server.arrays import decode_array

    with urllib.request.urlopen(base + path, timeout=120) as response:
        return decode_array(response.read())
