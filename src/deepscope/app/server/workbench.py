"""What a running workbench holds: its models (each with its data and workspace, scanned in the background),
the images, the blobs, the jobs, the bounded worker pool and the heat-map batcher. One object, made by
:func:`open_workbench` and handed to :func:`deepscope.app.server.app.create_app`; no module-level state."""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

from deepscope.app.server.batching import Batcher
from deepscope.app.server.blobs import BlobStore
from deepscope.app.server.images import SAMPLE_PREFIX, ImageLibrary, UploadLimits
from deepscope.app.server.jobs import Jobs
from deepscope.app.server.problems import (
    ForbiddenSpecError,
    NotFoundError,
    WorkspaceNotReadyError,
    error_body,
)
from deepscope.app.server.security import Access, inside
from deepscope.atlas.scanning.driver import scan
from deepscope.atlas.workspace import Workspace, open_workspace
from deepscope.errors import DeepscopeError
from deepscope.units.inverter import Inverter
from deepscope.workspace.store import DATABASE, Store
from deepscope.zoo.datasets import dataset_name, load_dataset, split_item
from deepscope.zoo.images import load_images
from deepscope.zoo.loaders import load_model
from deepscope.zoo.vision_model import VisionModel

log = logging.getLogger("deepscope.server")
Result = TypeVar("Result")

DEFAULT_MODELS = (("zoo:efficientnet_lite0", "samples"), ("zoo:lenet_mnist", "mnist5k:test"))
DEFAULT_ROOT = Path("~/.cache/deepscope/workspaces")
# Schemes a model added over HTTP may use: none of them runs code or reads a file the request names.
HTTP_SCHEMES = ("zoo", "torchvision", "timm")


@dataclass(frozen=True)
class Settings:
    """How a workbench runs: where workspaces live (``root``), the model device, the worker threads, the
    heat-map batching window and largest batch, upload caps, and whether scans print progress bars."""

    root: Path = DEFAULT_ROOT
    device: str = "cpu"
    workers: int = 2
    window: float = 0.015
    max_batch: int = 8
    limits: UploadLimits = field(default_factory=UploadLimits)
    scan_progress: bool = False
    scan_batch_size: int = 64


@dataclass
class ScanState:
    """A model's workspace as the page sees it: none (no data), queued, scanning, ready or failed."""

    state: str = "none"
    message: str = ""
    samples: int = 0
    progress: float = 0.0


class ServedModel:
    """One model of the workbench: its :class:`VisionModel`, its data, its workspace directory and the scan's
    state, and small caches (graphs per depth, preprocessed images)."""

    def __init__(self, model_id: str, spec: str, vm: VisionModel, data: str | Dataset | None, folder: Path):
        self.id = model_id
        self.spec = spec
        self.vm = vm
        self.data = data
        self.folder = folder
        self.dataset: Dataset | None = None
        self.scan = ScanState()
        self.workspace: Workspace | None = None
        self.store: Store | None = None  # the artifacts store, usable before (and without) a scan
        self.graphs: dict[int | None, Any] = {}
        self.default_layers: dict[tuple[int, ...], str] = {}
        self.inputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.inverters: dict[str, Inverter] = {}  # trained decoders, loaded from the workspace once per layer
        self.lock = threading.RLock()  # writes to the workspace and the caches

    @property
    def data_name(self) -> str | None:
        if self.data is None:
            return None
        return self.data if isinstance(self.data, str) else dataset_name(self.data)

    def ready_workspace(self) -> Workspace:
        """The scanned workspace, or :class:`WorkspaceNotReadyError` saying why there is none yet."""
        if self.workspace is not None:
            return self.workspace
        if self.scan.state == "none":
            raise WorkspaceNotReadyError(
                f"model {self.id!r} was given no data, so it has no dataset view; start the server with "
                f"--data DATA (e.g. --data mnist5k:test) or add it with POST /api/models and data"
            )
        if self.scan.state == "failed":
            raise WorkspaceNotReadyError(f"the scan of {self.id!r} failed: {self.scan.message}")
        raise WorkspaceNotReadyError(
            f"the scan of {self.id!r} is {self.scan.state} ({self.scan.progress:.0%}); the dataset views open "
            "when it is done (GET /api/status shows its progress)"
        )

    def artifacts(self) -> Store:
        """The model's workspace store for cached results (created empty when the model has no scan)."""
        with self.lock:
            if self.store is None:
                self.store = Store.create(self.folder)
            return self.store

    def sample_picture(self, index: int):
        """Dataset sample ``index`` as a PIL image in the model's mode."""
        if self.dataset is None:
            raise NotFoundError(f"model {self.id!r} has no data, so no sample {index}")
        if not 0 <= index < len(self.dataset):
            raise NotFoundError(
                f"model {self.id!r}'s data has samples 0..{len(self.dataset) - 1}, not {index}"
            )
        image, _ = split_item(self.dataset[index])
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            raise NotFoundError(
                f"sample {index} of {self.data_name} is a tensor of model inputs, not a picture the page can show"
            )
        if isinstance(image, torch.Tensor):
            image = image.numpy()
        return load_images(image, mode=self.vm.image_mode, convert=True)[0]


class Workbench:
    """The state of one server: models by id, images, blobs, jobs and the pools (see the module docs)."""

    def __init__(self, settings: Settings, access: Access):
        self.settings = settings
        self.access = access
        self.root = Path(settings.root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, ServedModel] = {}
        self.images = ImageLibrary(self.root / "uploads", settings.limits)
        self.blobs = BlobStore(self.root / "blobs")
        self.jobs = Jobs(workers=1)
        self.pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="deepscope-model")
        self.batcher = Batcher(self.run, settings.window, settings.max_batch)
        self.heatmap_meta: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.thumbnails: dict[str, dict[str, Any]] = {}
        self._scans: queue.Queue[ServedModel | None] = queue.Queue()
        self._scanner: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------------
    # models

    def add_model(
        self,
        spec: str | VisionModel,
        data: str | Dataset | None = None,
        workspace: str | Path | None = None,
        from_http: bool = False,
    ) -> ServedModel:
        """Load a model (``spec``: a spec string, or a VisionModel in tests and notebooks), with its data and its
        workspace directory (default ``<root>/<id>@<data>``; a given one must lie under the root). A model with
        data is queued for its scan."""
        if from_http and isinstance(spec, str) and spec.partition(":")[0] not in HTTP_SCHEMES:
            raise ForbiddenSpecError(
                f"model spec {spec!r}: over HTTP the server loads {', '.join(s + ':' for s in HTTP_SCHEMES)} "
                "specs only (the others run code or read files); give it on the command line: deepscope serve SPEC"
            )
        vm = load_model(spec)
        if self.settings.device != "cpu":
            vm.module.to(self.settings.device)
        spec_text = spec if isinstance(spec, str) else vm.name
        with self._lock:
            model_id = _unique(_slug(spec_text), self.models)
            data_text = None if data is None else (data if isinstance(data, str) else dataset_name(data))
            folder_name = f"{model_id}@{_slug(data_text)}" if data_text else model_id
            folder = inside(self.root, workspace if workspace is not None else folder_name)
            served = ServedModel(model_id, spec_text, vm, data, folder)
            if data is not None:
                served.dataset = load_dataset(data, vm.labels)
                served.scan = ScanState("queued", "waiting for the scan to start", len(served.dataset))
            self.models[model_id] = served
        if (folder / DATABASE).is_file() and data is None:
            self._open_existing(served)
        if data is not None:
            self._scans.put(served)
            self._start_scanner()
        return served

    def model(self, model_id: str) -> ServedModel:
        served = self.models.get(model_id)
        if served is None:
            known = ", ".join(self.models) or "none"
            raise NotFoundError(f"no model {model_id!r} on this server; models: {known}")
        return served

    def status_of(self, served: ServedModel) -> ScanState:
        """The scan's state, with its progress read from the workspace (committed chunks) while it runs."""
        state = served.scan
        if state.state == "scanning":
            state.progress = _committed_fraction(served.folder)
        return state

    # ------------------------------------------------------------------------------------------------------
    # scanning, one model at a time in one background thread

    def _start_scanner(self) -> None:
        with self._lock:
            if self._scanner is None or not self._scanner.is_alive():
                self._scanner = threading.Thread(target=self._scan_loop, name="deepscope-scan", daemon=True)
                self._scanner.start()

    def _scan_loop(self) -> None:
        while True:
            served = self._scans.get()
            if served is None:
                return
            if isinstance(served, _Marker):
                served.event.set()
                continue
            self._scan_one(served)

    def _scan_one(self, served: ServedModel) -> None:
        served.scan = ScanState("scanning", f"scanning {served.data_name}", len(served.dataset or []))
        try:
            # The scan loads its own copy of the model from the spec when it has one, so that its work never
            # shares a module with the requests served meanwhile.
            model = served.vm
            if served.spec.partition(":")[0] in HTTP_SCHEMES:
                model = load_model(served.spec)
                model.module.to(self.settings.device)
            workspace = scan(
                model,
                served.dataset,
                out=served.folder,
                batch_size=self.settings.scan_batch_size,
                progress=self.settings.scan_progress,
            )
        except Exception as error:  # a failed scan leaves the model served without its dataset views
            body = error_body(error)
            if body["kind"] == "InternalError":
                log.exception("scan of %s failed", served.id)
            served.scan = ScanState("failed", body["error"], served.scan.samples, 0.0)
            return
        self._attach(served, workspace)

    def _attach(self, served: ServedModel, workspace: Workspace) -> None:
        with served.lock:
            served.workspace = workspace
            served.store = workspace.store
            served.scan = ScanState("ready", "scanned", len(workspace.indices), 1.0)

    def _open_existing(self, served: ServedModel) -> None:
        """A workspace directory given without data: its latest scan, when it holds one."""
        try:
            workspace = open_workspace(served.folder)
        except DeepscopeError as error:
            served.scan = ScanState("none", str(error))
            return
        self._attach(served, workspace)

    def wait_for_scans(self, timeout: float | None = None) -> None:
        """Block until every queued scan has finished (tests, scripts)."""
        done = threading.Event()
        self._scans.put(_Marker(done))  # type: ignore[arg-type]
        self._start_scanner()
        if not done.wait(timeout):
            raise WorkspaceNotReadyError(f"the scans did not finish within {timeout} s")

    # ------------------------------------------------------------------------------------------------------
    # work off the event loop

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` in the bounded model pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def close(self) -> None:
        self._scans.put(None)
        self.jobs.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for served in self.models.values():
            if served.store is not None and served.workspace is None:
                served.store.close()

    # ------------------------------------------------------------------------------------------------------
    # images as model input

    def picture(self, image_id: str, served: ServedModel | None = None):
        """The PIL picture of any image id (a sample of ``served``'s data, or of the model its id names)."""
        if image_id.startswith(SAMPLE_PREFIX):
            _, model_id, index = image_id.split(":", 2) if image_id.count(":") == 2 else ("", "", "")
            if not index.lstrip("-").isdigit():
                raise NotFoundError(f"image id {image_id!r}: a dataset sample is sample:MODEL:INDEX")
            return self.model(model_id).sample_picture(int(index))
        return self.images.picture(image_id)

    def model_input(self, served: ServedModel, image_id: str) -> torch.Tensor:
        """``[1, C, H, W]`` model input of an image, through the model's preprocessing (cached)."""
        with served.lock:
            cached = served.inputs.get(image_id)
            if cached is not None:
                served.inputs.move_to_end(image_id)
                return cached
        picture = self.picture(image_id, served)
        x = served.vm.preprocess(load_images(picture, mode=served.vm.image_mode, convert=True))
        with served.lock:
            served.inputs[image_id] = x
            while len(served.inputs) > 64:
                served.inputs.popitem(last=False)
        return x


class _Marker:
    def __init__(self, event: threading.Event):
        self.event = event


def open_workbench(
    specs: Sequence[str | VisionModel] = (),
    data: str | Dataset | None = None,
    settings: Settings | None = None,
    access: Access | None = None,
) -> Workbench:
    """A workbench serving ``specs`` (default: EfficientNet-Lite0 on the bundled photos and LeNet-5 on the
    held-out MNIST digits), each on ``data`` when given. Scans start in the background.

    >>> import tempfile
    >>> bench = open_workbench(["zoo:lenet_mnist"], settings=Settings(root=tempfile.mkdtemp()))
    >>> list(bench.models), bench.models["lenet_mnist"].scan.state
    (['lenet_mnist'], 'none')
    >>> bench.close()
    """
    bench = Workbench(settings or Settings(), access or Access())
    chosen = [(spec, data) for spec in specs] if specs else list(DEFAULT_MODELS)
    for spec, spec_data in chosen:
        bench.add_model(spec, spec_data)
    return bench


def _slug(text: str) -> str:
    """A short id for a spec or data name: its name without scheme or options, safe in a URL path.

    >>> _slug("torchvision:resnet152?weights=none"), _slug("mnist5k:test"), _slug("python:pkg.mod:make")
    ('resnet152', 'mnist5k-test', 'make')
    """
    base = text.split("?", 1)[0]
    scheme, sep, rest = base.partition(":")
    if sep and scheme in ("zoo", "torchvision", "timm", "python", "torchscript", "folder"):
        base = rest.rsplit(":", 1)[-1]
        base = Path(base).stem if scheme == "torchscript" else base
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
    return slug[:48]


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, counter = name, 1
    while candidate in taken:
        counter += 1
        candidate = f"{name}-{counter}"
    return candidate


def _committed_fraction(folder: Path) -> float:
    """Share of the latest run's samples in committed chunks, read straight from the database (a reader in
    WAL mode does not disturb the writing scan)."""
    database = folder / DATABASE
    if not database.is_file():
        return 0.0
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            row = connection.execute(
                "SELECT r.n_samples, COALESCE(SUM(c.stop - c.start), 0) FROM runs r "
                "LEFT JOIN chunks c ON c.run_id = r.id GROUP BY r.id ORDER BY r.id DESC LIMIT 1"
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error:
        return 0.0
    if row is None or not row[0]:
        return 0.0
    return min(1.0, row[1] / row[0])
