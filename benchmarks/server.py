"""The workbench server under load, printed in one run (issue 18):

1. Eight concurrent clients ask a real ``deepscope serve`` process (uvicorn on a loopback port) for Grad-CAM on
   EfficientNet-Lite0, each client on its own photo (the five bundled photos and three uploaded crops of them),
   each sending its next request as soon as the last is answered: p50 and p95 latency, how many requests
   shared a pass (the server's coalescing), and the throughput, against one batched ``ds.attribute`` call over
   the same eight photos in this process (best of ``--repeats``; run before the server starts, so the two never
   share the CPU).
2. The server's resident memory (psutil) after the first 100 requests and after ``--requests`` (1,000).

    python benchmarks/server.py [--requests 1000] [--clients 8] [--device cpu|cuda] [--repeats 5]

Targets: p95 <= 400 ms on a 2-core CPU; throughput >= 0.8x the batched call; memory after 1,000 requests within
10% of memory after 100. The smallest run that still shows every figure: ``--requests 120 --repeats 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import deepscope as ds  # noqa: E402

METHOD = "grad_cam"


def photos() -> dict[str, Image.Image]:
    """Eight different photos: the five bundled ones and three crops of them (uploaded to the server)."""
    bundled = ds.samples()
    crops = {
        "chelsea-left": bundled["chelsea"].crop((0, 0, 300, 300)),
        "astronaut-face": bundled["astronaut"].crop((120, 40, 360, 280)),
        "rocket-top": bundled["rocket"].crop((200, 0, 427, 227)),
    }
    return {**bundled, **crops}


def batched_reference(device: str, repeats: int, pictures: dict) -> float:
    """Images per second of one ``ds.attribute`` call over the eight photos (best of ``repeats``)."""
    vm = ds.load_model("zoo:efficientnet_lite0")
    vm.module.to(device)
    x = vm.preprocess(list(pictures.values()))
    ds.attribute(vm, x, METHOD)  # warm-up: the first call finds the layer and warms the kernels
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        ds.attribute(vm, x, METHOD, layer="_swish@1")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def start_server(device: str, workspace: Path) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable, "-m", "deepscope.app.cli", "serve", "zoo:efficientnet_lite0", "--port", "0",
        "--no-browser", "--workspace", str(workspace), "--device", device,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment
    )
    line = process.stdout.readline()
    match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not match:
        process.terminate()
        raise SystemExit(f"the server did not print its URL: {line!r}")
    url = match.group(1)
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/api/status", timeout=5, trust_env=False).raise_for_status()
            return process, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                process.terminate()
                raise SystemExit("the server did not answer within 120 s") from None
            time.sleep(0.2)


def image_ids(url: str, pictures: dict) -> list[str]:
    ids = []
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as client:
        for name, picture in pictures.items():
            if name in ds.samples():
                ids.append(f"photo:{name}")
                continue
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            answer = client.post(
                "/api/images", files={"file": (f"{name}.png", buffer.getvalue(), "image/png")}
            )
            answer.raise_for_status()
            ids.append(answer.json()["id"])
    return ids


async def load(url: str, ids: list[str], requests: int) -> tuple[list[float], list[int], float]:
    """``requests`` heat maps from ``len(ids)`` clients at once; (latencies, batch sizes, wall time)."""
    latencies: list[float] = []
    batches: list[int] = []
    remaining = [requests]

    async def client_loop(client: httpx.AsyncClient, image: str) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            start = time.perf_counter()
            answer = await client.get(f"/api/models/efficientnet_lite0/heatmap?image={image}&method={METHOD}")
            latencies.append(time.perf_counter() - start)
            answer.raise_for_status()
            batches.append(json.loads(answer.headers["x-deepscope-meta"])["batched"])

    limits = httpx.Limits(max_connections=len(ids))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, trust_env=False) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, image) for image in ids))
        wall = time.perf_counter() - start
    return latencies, batches, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=1000, help="heat-map requests in all (memory: after 100 and these)"
    )
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients, one photo each (at most 8)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the batched reference call")
    args = parser.parse_args()
    if args.requests < 100 + args.clients:
        raise SystemExit("--requests must be at least 100 + clients (memory is read after the first 100)")
    pictures = dict(list(photos().items())[: args.clients])
    reference = batched_reference(args.device, args.repeats, pictures)
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {len(pictures)} clients, {METHOD} on EfficientNet-Lite0"
    )
    print(f"one batched ds.attribute call over {len(pictures)} photos: {reference:.1f} images/s")
    with tempfile.TemporaryDirectory() as workspace:
        process, url = start_server(args.device, Path(workspace))
        try:
            server = psutil.Process(process.pid)
            ids = image_ids(url, pictures)
            asyncio.run(load(url, ids, 16))  # warm-up: model input caches, the default layer, the kernels
            first_latencies, first_batches, _ = asyncio.run(load(url, ids, 100))
            memory_100 = server.memory_info().rss
            latencies, batches, wall = asyncio.run(load(url, ids, args.requests - 100))
            memory_all = server.memory_info().rss
        finally:
            process.terminate()
            process.wait(timeout=30)
    every = np.array(first_latencies + latencies) * 1000
    throughput = len(latencies) / wall
    print(
        f"{len(every)} requests: latency p50 {np.percentile(every, 50):.0f} ms, p95 {np.percentile(every, 95):.0f} ms (target <= 400)"
    )
    shared = np.array(first_batches + batches)
    print(
        f"requests per pass: mean {shared.mean():.1f}, max {shared.max()} (coalescing window 15 ms, at most 8)"
    )
    print(
        f"server throughput {throughput:.1f} images/s = {throughput / reference:.2f}x the batched call (target >= 0.8)"
    )
    growth = memory_all / memory_100 - 1
    print(
        f"server resident memory: {memory_100 / 2**20:.0f} MiB after 100 requests, {memory_all / 2**20:.0f} MiB after "
        f"{len(every)} ({growth:+.1%}; target within 10%)"
    )


if __name__ == "__main__":
    main()
