"""Running the workbench: ``deepscope serve`` loads the models, starts their scans, prints the URL (with the token
off loopback) and serves until Ctrl-C."""

from __future__ import annotations

import socket
import sys
import threading
import time
import webbrowser
from collections.abc import Sequence
from pathlib import Path

from deepscope.app.server.app import create_app
from deepscope.app.server.images import UploadLimits
from deepscope.app.server.security import Access
from deepscope.app.server.workbench import DEFAULT_ROOT, Settings, Workbench, open_workbench
from deepscope.errors import SettingError


def serve_workbench(
    specs: Sequence[str],
    *,
    data: str | None = None,
    root: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    browser: bool = True,
    device: str = "cpu",
    workers: int = 2,
    token: str | None = None,
    max_upload_mb: float = 20.0,
    max_megapixels: float = 40.0,
) -> None:
    """Serve the workbench until interrupted (see ``deepscope serve --help``)."""
    import uvicorn

    if data is not None and not specs:
        raise SettingError(
            "--data applies to the MODELs given; name the models too (deepscope serve MODEL --data DATA)"
        )
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SettingError(f"--device {device}: no CUDA device is visible to torch on this machine")
    settings = Settings(
        root=Path(root) if root is not None else DEFAULT_ROOT,
        device=device,
        workers=workers,
        limits=UploadLimits(int(max_upload_mb * 1e6), int(max_megapixels * 1e6)),
        scan_progress=True,
    )
    access = Access.for_host(host, token)
    chosen_port = port or _free_port(host)
    print(f"loading {', '.join(specs) or 'the default models'}...", file=sys.stderr, flush=True)
    bench = open_workbench(specs, data, settings, access)
    app = create_app(bench)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown_host}:{chosen_port}/" + (f"?token={access.token}" if access.required else "")
    print(f"deepscope workbench: {url}", flush=True)
    print(f"workspaces in {bench.root}; Ctrl-C stops the server", file=sys.stderr, flush=True)
    threading.Thread(target=_report_scans, args=(bench,), daemon=True, name="deepscope-scan-report").start()
    if browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    try:
        uvicorn.run(app, host=host, port=chosen_port, log_level="warning")
    finally:
        bench.close()


def _report_scans(bench: Workbench) -> None:
    """One line per model when its scan ends (the scan's own progress bar shows it meanwhile)."""
    reported: set[str] = set()
    while len(reported) < len(bench.models):
        for served in list(bench.models.values()):
            state = served.scan.state
            if served.id in reported or state in ("queued", "scanning"):
                continue
            reported.add(served.id)
            if state == "ready":
                print(
                    f"{served.id}: workspace ready ({served.scan.samples} samples) in {served.folder}",
                    file=sys.stderr,
                )
            elif state == "failed":
                print(f"{served.id}: scan failed: {served.scan.message}", file=sys.stderr)
        time.sleep(0.5)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
