"""Fetch the workbench's JavaScript libraries, pinned, into src/deepscope/app/web/vendor/.

The files are committed; a user's ``pip install`` never runs npm. Rerun this script only to change a pin:

    python scripts/vendor_js.py           # npm pack each pinned package, check its integrity, copy the files
    python scripts/vendor_js.py --check   # offline: the committed files still match vendor/MANIFEST.json

Each package is fetched with ``npm pack NAME@VERSION`` and its tarball checked against the sha512 integrity that
the registry published for that version (pinned below), so a changed tarball is refused rather than vendored.
Only the files the workbench loads are kept, each package with its license file. MANIFEST.json records the
version, license, integrity and the sha256 of every file kept.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "src" / "deepscope" / "app" / "web" / "vendor"
MANIFEST = VENDOR / "MANIFEST.json"


@dataclass(frozen=True)
class Pin:
    """One npm package: the files kept (paths inside the tarball's package/ folder) and what it is for."""

    name: str
    version: str
    license: str
    integrity: str
    files: tuple[str, ...]
    purpose: str


PINS = (
    Pin(
        "elkjs",
        "0.12.1",
        "EPL-2.0 OR GPL-3.0-or-later",
        "sha512-IhMYKHE4S2vtx0QrhBP3lYOIKDeIiJXBrdq9MGYkuB8ZHqhrBnHNfSUndjXFewrX1CPK8chwq+2NA0K0hliYuw==",
        ("lib/elk-api.js", "lib/elk-worker.min.js", "LICENSE.md"),
        "layered layout of the architecture graph, in a web worker",
    ),
    Pin(
        "regl",
        "2.1.1",
        "MIT",
        "sha512-+IOGrxl3FZ8ZM9ixCWQZzFRiRn7Rzn9bu3iFHwg/yz4tlOUQgbO4PHLgG+1ZT60zcIV8tief6Qrmyl8qcoJP0g==",
        ("dist/regl.min.js", "LICENSE"),
        "WebGL wrapper under regl-scatterplot",
    ),
    Pin(
        "pub-sub-es",
        "3.0.0",
        "MIT",
        "sha512-pf+6yCPsOfvDMru2LnsqdKSN8XQyF5HZzmEoKBvjMk4TILMUQiq1vxI6rC92T9ErY06sLXBmC1p7JGNFVB1pUQ==",
        ("dist/index.js", "LICENSE"),
        "event emitter under regl-scatterplot",
    ),
    Pin(
        "regl-scatterplot",
        "1.16.0",
        "MIT",
        "sha512-LSNRzihkLgaSEALZv95+w02nX1c6slJJahqHqMNY0YOkE3L6Bk1e38GJaGatW2w8PlB1tOdvq3Cj0tPPrBhpsA==",
        ("dist/regl-scatterplot.esm.js", "LICENSE"),
        "WebGL scatter with pan, zoom and lasso for the dataset layout",
    ),
    Pin(
        "uplot",
        "1.6.32",
        "MIT",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        ("dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE"),
        "histograms and curves",
    ),
    Pin(
        "d3-color",
        "3.1.1",
        "ISC",
        "sha512-lfab8x0Bj0UO7SNsY8dZSbNIA6ipbkE3X0NG9nqjCu6CfCHZseuDnOSJY7hidKrjpP++i1M2qT+FlAdPKYRilA==",
        ("dist/d3-color.min.js", "LICENSE"),
        "colors under d3-scale-chromatic",
    ),
    Pin(
        "d3-interpolate",
        "3.0.2",
        "ISC",
        "sha512-IRzGU62DtxhvsnSTWMQIdnoZ6gA+BCWwBon1EJI6SjoN595799b6z/QRBzXfFhE8iupUPp3042yBNo0STPqnzQ==",
        ("dist/d3-interpolate.min.js", "LICENSE"),
        "interpolation under d3-scale-chromatic",
    ),
    Pin(
        "d3-scale-chromatic",
        "3.1.1",
        "ISC",
        "sha512-lA5gfN2yMvmChubmptnDiBfeGpHD7Yb1EbvCz0TZE0WHXhyR6W2allPuhKtzV5ILQRqeOdefF0qYtERReLUBDg==",
        ("dist/d3-scale-chromatic.min.js", "LICENSE"),
        "the colormaps deepscope.render uses (inferno, RdBu) and the class palette",
    ),
)


def integrity_of(tarball: bytes) -> str:
    """The npm registry's integrity string (Subresource Integrity, sha512) of a tarball's bytes."""
    return "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def npm_pack(pin: Pin, into: Path) -> Path:
    """``npm pack NAME@VERSION`` into ``into``; the tarball's path."""
    done = subprocess.run(
        ["npm", "pack", f"{pin.name}@{pin.version}", "--pack-destination", str(into), "--silent"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"npm pack {pin.name}@{pin.version} failed:\n{done.stderr.strip()}")
    return into / done.stdout.strip().splitlines()[-1]


def vendor(pin: Pin, scratch: Path) -> dict:
    """Fetch one pinned package, refuse it unless its integrity matches, copy its kept files; its manifest entry."""
    tarball = npm_pack(pin, scratch)
    found = integrity_of(tarball.read_bytes())
    if found != pin.integrity:
        sys.exit(
            f"{pin.name}@{pin.version}: the tarball's integrity is {found}, the pin says {pin.integrity}"
        )
    target = VENDOR / pin.name
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.iterdir():
        stale.unlink()
    with tarfile.open(tarball) as archive:
        for path in pin.files:
            member = archive.extractfile(f"package/{path}")
            if member is None:
                sys.exit(f"{pin.name}@{pin.version} has no file {path}")
            (target / Path(path).name).write_bytes(member.read())
    return {
        "name": pin.name,
        "version": pin.version,
        "license": pin.license,
        "integrity": pin.integrity,
        "purpose": pin.purpose,
        "files": {Path(path).name: sha256_of(target / Path(path).name) for path in pin.files},
    }


def check() -> list[str]:
    """What differs between the committed files and MANIFEST.json (empty when everything matches)."""
    manifest = json.loads(MANIFEST.read_text())
    problems = []
    pinned = {(pin.name, pin.version) for pin in PINS}
    recorded = {(entry["name"], entry["version"]) for entry in manifest["packages"]}
    if pinned != recorded:
        problems.append(
            f"MANIFEST.json lists {sorted(recorded)}, the pins are {sorted(pinned)}: rerun the script"
        )
    for entry in manifest["packages"]:
        folder = VENDOR / entry["name"]
        kept = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
        if kept != set(entry["files"]):
            problems.append(f"{folder} holds {sorted(kept)}, the manifest {sorted(entry['files'])}")
        for name, digest in entry["files"].items():
            if name in kept and sha256_of(folder / name) != digest:
                problems.append(f"{folder / name} was changed since it was vendored")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="check the committed files offline, fetch nothing"
    )
    arguments = parser.parse_args()
    if arguments.check:
        problems = check()
        print("\n".join(problems) or f"{len(PINS)} vendored packages match {MANIFEST.name}")
        sys.exit(1 if problems else 0)
    with tempfile.TemporaryDirectory() as scratch:
        entries = [vendor(pin, Path(scratch)) for pin in PINS]
    MANIFEST.write_text(json.dumps({"packages": entries}, indent=2) + "\n")
    for entry in entries:
        print(f"{entry['name']}@{entry['version']} ({entry['license']}): {', '.join(entry['files'])}")


if __name__ == "__main__":
    main()
