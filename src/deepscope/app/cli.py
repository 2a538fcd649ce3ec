"""The `deepscope` command: thin wrappers over library calls, printing text and writing files."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from deepscope.errors import DeepscopeError

app = typer.Typer(
    help="See inside computer-vision networks: predictions, architecture graphs, heat maps and more.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelArgument = Annotated[
    str,
    typer.Argument(
        help="Model spec: zoo:NAME, torchvision:NAME[?weights=none], timm:NAME, torchscript:PATH, python:mod:factory"
    ),
]

ConvertOption = Annotated[
    bool,
    typer.Option(
        "--convert",
        help="Read image files in the model's mode as image folders are: transparency flattened onto white, "
        "grayscale replicated to RGB, color to luminance, the first frame (without it such files are an error)",
    ),
]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Use the first N samples of the data")]


class OutputError(DeepscopeError, OSError):
    """An output path deepscope cannot write: under a file, in a read-only or missing place."""


def writable_directory(path: Path) -> Path:
    """``path`` created if needed and checked writable before any work: a path under a file, in a read-only
    place or where a directory cannot be made is a one-line error naming it, not a traceback at the end."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise OutputError(f"cannot write to {path}: {error.strerror or error}") from None
    return path


def writable_file(path: Path) -> Path:
    """``path`` whose directory is writable (see :func:`writable_directory`) and which is not a directory."""
    if path.is_dir():
        raise OutputError(f"cannot write to {path}: it is a directory; give a file name")
    writable_directory(path.parent)
    return path


@contextmanager
def stage(what: str) -> Iterator[None]:
    """Say on stderr what runs now and, when it is done, how long it took: the progress of a command's steps."""
    started = time.perf_counter()
    typer.echo(f"{what} ...", err=True)
    yield
    typer.echo(f"  done in {time.perf_counter() - started:.1f} s", err=True)


@app.command()
def models() -> None:
    """List the bundled models and the spec schemes deepscope loads."""
    from deepscope.app.catalog import stored

    typer.echo(stored("models"))


@app.command()
def predict(
    model: ModelArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    top: Annotated[int, typer.Option(min=1, help="How many classes to show per image")] = 5,
    convert: ConvertOption = False,
) -> None:
    """Top classes with probabilities for each image."""
    from deepscope.zoo.images import load_images
    from deepscope.zoo.loaders import load_model

    vm = load_model(model)
    pictures = load_images(images, mode=vm.image_mode, convert=convert)
    probabilities, indices = vm.predict(vm.preprocess(pictures), k=top)
    for path, probs, classes in zip(images, probabilities, indices, strict=True):
        typer.echo(f"{path}")
        for rank, (p, i) in enumerate(zip(probs.tolist(), classes.tolist(), strict=True), start=1):
            typer.echo(f"  {rank}. {p:7.2%}  {i:4d}  {vm.label(i)}")


@app.command("graph")
def graph_command(
    model: ModelArgument,
    depth: Annotated[
        int | None, typer.Option(min=1, help="Collapse modules deeper than this many dotted levels")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph as JSON")] = False,
    svg: Annotated[Path | None, typer.Option(help="Also write a node-link diagram to this SVG file")] = None,
) -> None:
    """The architecture graph as a text table (or JSON), with output shapes and parameter counts."""
    from deepscope.probe.graph import graph
    from deepscope.render.graph_svg import graph_svg
    from deepscope.zoo.loaders import load_model

    if svg is not None:
        writable_file(svg)
    vm = load_model(model)
    dataflow = graph(vm, depth=depth)
    typer.echo(json.dumps(dataflow.to_dict(), indent=1) if as_json else dataflow.summary())
    if svg is not None:
        svg.write_text(graph_svg(dataflow, vm.name))
        typer.echo(f"wrote {svg}", err=True)


@app.command()
def explain(
    model: ModelArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    method: Annotated[
        str,
        typer.Option(
            "--method", "-m", help="Comma-separated heat-map methods (deepscope methods lists them)"
        ),
    ] = "grad_cam",
    out: Annotated[Path, typer.Option(help="Directory for the pictures")] = Path("deepscope-explain"),
    target: Annotated[
        int | None, typer.Option(min=0, help="Class to explain (default: each image's top class)")
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer of the layer-space methods (default: found)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Model inputs per forward for expanding methods")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            help="A method option, KEY=VALUE (every listed method that has it) or METHOD.KEY=VALUE, e.g. "
            "-o steps=16 -o grad_cam.relu=true (deepscope methods lists the options); repeatable",
        ),
    ] = None,
    clip: Annotated[
        float,
        typer.Option(
            min=1,
            max=100,
            help="Contrast: the percentile of |values| drawn at full color (lower it for sparse maps)",
        ),
    ] = 99.5,
    convert: ConvertOption = False,
) -> None:
    """Heat maps of each image with each method: one overlay PNG per image and method (over the photo as it is,
    with a color bar), and grid.png."""
    from deepscope.attribution.base import parse_methods
    from deepscope.attribution.explain import explain as explain_batch
    from deepscope.render.heatmap import grid, heatmap
    from deepscope.zoo.images import load_images
    from deepscope.zoo.loaders import load_model

    specs = parse_methods(method, option or [])  # a wrong name or option fails before anything is loaded
    writable_directory(out)
    with stage(f"loading {model}"):
        vm = load_model(model)
    pictures = load_images(images, mode=vm.image_mode, convert=convert)
    x = vm.preprocess(pictures)
    with stage(f"explaining {len(images)} image(s) with {', '.join(spec.name for spec in specs)}"):
        maps = explain_batch(vm, x, specs, target=target, layer=layer, batch_size=batch_size)
        _, top = vm.predict(x, k=1)
    explained = [target if target is not None else int(top[i, 0]) for i in range(len(images))]
    # Each map over the photo as it is (its size and aspect, the part the model saw outlined); a model with its
    # own transform has no crop to map back, so its maps go over its input.
    originals = vm.transform is None
    backgrounds = pictures if originals else [None] * len(pictures)
    preprocessing = vm.preprocessing if originals else None
    for index, path in enumerate(images):
        typer.echo(f"{path}: explaining class {explained[index]} ({vm.label(explained[index])})")
        for name, batch in maps.items():
            picture = heatmap(
                batch[index], backgrounds[index], method=name, preprocessing=preprocessing, clip=clip
            )
            typer.echo(f"  {name:24s} {picture.save(out / f'{path.stem}_{name}.png')}")
    labels = [vm.label(c) for c in explained]
    cells = vm.pixels(pictures) if originals else None
    typer.echo(f"grid: {grid(dict(maps), cells, labels=labels, cell=160, clip=clip).save(out / 'grid.png')}")
    for name, layer_name in maps.layers.items():
        typer.echo(f"layer of {name}: {layer_name}")
    typer.echo(f"passes through the model: {maps.passes}")


@app.command()
def methods() -> None:
    """The heat-map methods: name, family, cost in passes, reference and options (for explain --option)."""
    from deepscope.app.catalog import stored

    typer.echo(stored("methods"))


@app.command()
def evaluate(
    model: ModelArgument,
    data: Annotated[
        list[str],
        typer.Argument(
            help="A data spec (mnist5k[:test|train], samples, python:mod:factory, a folder) or image files"
        ),
    ],
    methods: Annotated[str, typer.Option(help="Heat-map methods, comma-separated (see ds.methods())")],
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Metrics, comma-separated (see `deepscope metrics`; default: all that need no object masks)"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N samples")] = None,
    target: Annotated[
        str, typer.Option(help="'top1' (predicted class) or 'label' (dataset labels)")
    ] = "top1",
    layers: Annotated[
        str | None, typer.Option(help="Layers (names/globs, comma-separated) for the randomization test")
    ] = None,
    absolute: Annotated[
        str | None,
        typer.Option(
            help="Methods ranked by magnitude (comma-separated, or 'all'), e.g. saliency,smoothgrad"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Model inputs per forward pass")] = 64,
    out: Annotated[Path, typer.Option(help="Directory for the curve plots and table.csv")] = Path(
        "deepscope-evaluate"
    ),
    convert: ConvertOption = False,
) -> None:
    """Evaluate heat-map methods with faithfulness and sanity metrics: print the table and the ranking,
    write the curves as PNG files."""
    from deepscope.metrics.evaluate import evaluate as run_evaluation
    from deepscope.metrics.registry import metrics as registered
    from deepscope.render.curves import evaluation_plots
    from deepscope.zoo.loaders import load_model

    writable_directory(out)
    with stage(f"loading {model}"):
        vm = load_model(model)
    dataset = _evaluation_data(data, vm, convert)
    if target not in ("top1", "label"):
        raise typer.BadParameter("target must be 'top1' or 'label'", param_hint="--target")
    chosen = None if metrics is None else [name.strip() for name in metrics.split(",") if name.strip()]
    settings = None
    if layers is not None:
        names = chosen or [info.name for info in registered() if not info.needs_objects]
        settings = {name: {} for name in names}
        settings["randomization"] = {"layers": [layer.strip() for layer in layers.split(",")]}
    result = run_evaluation(
        vm,
        dataset,
        methods,
        settings if settings is not None else chosen,
        target="label" if target == "label" else None,
        limit=limit,
        absolute=absolute == "all" or [name.strip() for name in (absolute or "").split(",") if name.strip()],
        batch_size=batch_size,
        progress=True,
    )
    for sample in result.skipped:
        typer.echo(f"skipped {sample.index} {sample.source}: {sample.error}", err=True)
    table = result.table[["method", "metric", "mean", "std", "n", "better"]]
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    typer.echo("\nRanking (1 = best):")
    typer.echo(result.ranking.to_string(float_format=lambda v: f"{v:.3g}"))
    result.table.to_csv(out / "table.csv", index=False)
    for name, picture in evaluation_plots(result).items():
        picture.save(out / f"{name}.png")
    typer.echo(f"wrote {out / 'table.csv'} and the plots to {out}/", err=True)


@app.command("metrics")
def list_metrics() -> None:
    """The heat-map metrics `evaluate` runs: name, family, which way is better, what the score is, its reference
    and what it needs beyond the maps."""
    from deepscope.app.catalog import stored

    typer.echo(stored("metrics"))


def _evaluation_data(items: list[str], vm, convert: bool):
    """The data argument of `evaluate`: one data spec (see ds.load_dataset) or image files, read in the model's
    image mode."""
    from deepscope.zoo.datasets import load_dataset
    from deepscope.zoo.images import load_images

    if len(items) == 1 and not Path(items[0]).is_file():
        return load_dataset(items[0], vm.labels)
    return load_images([Path(item) for item in items], mode=vm.image_mode, convert=convert)


@app.command()
def units(
    model: ModelArgument,
    layer: Annotated[str, typer.Option(help="Layer name (see `deepscope graph MODEL`)")],
    data: Annotated[
        str | None,
        typer.Option(help="Data spec: mnist5k[:train|test], samples, python:mod:factory, or a folder"),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for the pictures")] = Path("deepscope-units"),
    unit: Annotated[
        list[int] | None, typer.Option("--unit", min=0, help="Units to show (repeat; default: the first 8)")
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Top patches per unit")] = 9,
    steps: Annotated[int, typer.Option(min=1, help="Feature-visualization steps")] = 128,
    limit: LimitOption = None,
) -> None:
    """What a layer's units encode: filters, activations, top-k patches with deconvnet projections, feature
    visualizations and an inversion, written as PNG files."""
    from deepscope.app.pages.units import write_unit_pictures
    from deepscope.probe.layers import get_layer
    from deepscope.zoo.datasets import first_items, load_dataset
    from deepscope.zoo.loaders import load_model

    writable_directory(out)
    with stage(f"loading {model}"):
        vm = load_model(model)
    get_layer(vm, layer)
    dataset = first_items(load_dataset(data, vm.labels), limit) if data is not None else None
    started = time.perf_counter()
    for path in write_unit_pictures(vm, layer, out, dataset, unit or None, k=k, steps=steps):
        typer.echo(f"wrote {path} ({time.perf_counter() - started:.1f} s)")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the page")] = Path("deepscope-demo"),
) -> None:
    """Write the demo page (bundled models and data, everything offline) and print its path."""
    from deepscope.app.demo import build_demo

    path = build_demo(out)
    typer.echo(f"wrote {path.resolve()}")


@app.command("scan")
def scan_command(
    model: ModelArgument,
    data: Annotated[
        str,
        typer.Argument(
            help="Data: an image folder (class per subfolder), mnist5k[:test], samples, python:mod:factory"
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Workspace directory (created, or resumed when it holds this scan)")
    ],
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer", help="Layer to record (repeatable, globs, NAME:input, NAME@N); first = embedding"
        ),
    ] = None,
    # The bracket is escaped: rich markup would take [ray] for a style tag and drop it.
    engine: Annotated[str, typer.Option(help=r"local, or ray (pip install 'deepscope\[ray]')")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (engine=ray); default: a local Ray")
    ] = None,
    actors: Annotated[
        int | None, typer.Option(min=1, help="Ray actors (default: one per GPU, else CPUs / 2)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass")] = 64,
    chunk_size: Annotated[
        int, typer.Option(min=1, help="Samples per committed chunk (the resume granularity)")
    ] = 512,
    k: Annotated[int, typer.Option(min=1, help="Top samples kept per unit")] = 16,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0, help="Threads reading images ahead of the model (default: 0 on the CPU, up to 8 on a GPU)"
        ),
    ] = None,
    limit: LimitOption = None,
) -> None:
    """Scan a dataset with a model in one pass into a workspace (resumable: run it again after an interruption)."""
    from deepscope.atlas.scanning.driver import scan
    from deepscope.zoo.datasets import first_items, load_dataset
    from deepscope.zoo.loaders import load_model

    writable_directory(out)
    with stage(f"loading {model}"):
        vm = load_model(model)
    try:
        ws = scan(
            vm,
            first_items(load_dataset(data, vm.labels), limit),
            layer or None,
            engine,
            out=out,
            batch_size=batch_size,
            chunk_size=chunk_size,
            k=k,
            progress=True,
            address=address,
            actors=actors,
            workers=workers,
        )
    except KeyboardInterrupt:
        typer.echo(
            f"\ninterrupted: the chunks finished so far are kept in {out}; run the same command again to continue",
            err=True,
        )
        raise SystemExit(130) from None
    labels = ws.labels
    typer.echo(f"{ws.path} run {ws.run.id}: {len(ws.indices)} samples scanned, {len(ws.skipped)} skipped")
    for sample in ws.skipped[:20]:
        typer.echo(f"  skipped {sample.index} {sample.source}: {sample.error}")
    if len(ws.skipped) > 20:
        typer.echo(f"  ... and {len(ws.skipped) - 20} more (see the samples table)")
    if labels is not None:
        known = labels >= 0
        typer.echo(
            f"accuracy {float((ws.predictions[known] == labels[known]).mean()):.2%} on {int(known.sum())} labeled samples"
        )
        mistakes = [
            f"{ws.classes[pair.label]} -> {ws.classes[pair.predicted]}: {pair.count} "
            f"(samples {', '.join(str(i) for i in pair.samples)})"
            for pair in ws.most_confused(n=5, samples=3)
        ]
        if mistakes:
            typer.echo("most confused (label -> predicted):\n  " + "\n  ".join(mistakes))
    typer.echo(f"layers: {', '.join(ws.layers)} (embedding: {ws.embedding_layer})")
    dead = {layer: ws.unit_statistics(layer)["dead"] for layer in ws.layers}
    listed = [f"{layer} {int(flags.sum())}/{len(flags)}" for layer, flags in dead.items() if flags.any()]
    typer.echo(f"dead units (never above 0): {', '.join(listed) if listed else 'none'}")


@app.command("compare")
def compare_command(
    workspace_a: Annotated[Path, typer.Argument(help="Workspace of the first model's scan")],
    workspace_b: Annotated[Path, typer.Argument(help="Workspace of the second model's scan (same data)")],
    html: Annotated[
        Path | None, typer.Option(help="Also write a page: CKA heat map and both confusion matrices")
    ] = None,
    run_a: Annotated[
        int | None,
        typer.Option(
            min=1, help="Run of the first workspace (default: its latest complete scan; scan prints the run)"
        ),
    ] = None,
    run_b: Annotated[
        int | None,
        typer.Option(min=1, help="Run of the second workspace (two models scanned into one workspace)"),
    ] = None,
    layouts: Annotated[
        str | None,
        typer.Option(
            help="Also lay out every layer's samples on the page: tsne, umap or pca (stored in each workspace)"
        ),
    ] = None,
) -> None:
    """Compare two scans of the same data: linear CKA between every pair of layers (pooled activations), each
    layer's sparsity and the two confusion matrices side by side."""
    from deepscope.app.pages.atlas import comparison_report
    from deepscope.atlas.compare import compare
    from deepscope.atlas.workspace import open_workspace

    a, b = open_workspace(workspace_a, run_a), open_workspace(workspace_b, run_b)
    result = compare(a, b, layout=layouts)
    typer.echo(f"A: {a.run.model} ({workspace_a} run {a.run.id})  accuracy {result.accuracy_a:.2%}")
    typer.echo(f"B: {b.run.model} ({workspace_b} run {b.run.id})  accuracy {result.accuracy_b:.2%}")
    typer.echo(f"same prediction on {result.agreement:.2%} of {len(a.indices)} samples")
    width = max(len(name) for name in result.layers_a)
    column = max(6, *(len(name) for name in result.layers_b))
    typer.echo("linear CKA (rows: A, columns: B)")
    typer.echo(" " * (width + 1) + " ".join(f"{name:>{column}s}" for name in result.layers_b))
    for name, row in zip(result.layers_a, result.cka, strict=True):
        typer.echo(f"{name:{width}s} " + " ".join(f"{value:{column}.3f}" for value in row))
    for side, names, values in (
        ("A", result.layers_a, result.sparsity_a),
        ("B", result.layers_b, result.sparsity_b),
    ):
        typer.echo(
            f"sparsity {side} (values <= 0): "
            + ", ".join(f"{n} {v:.1%}" for n, v in zip(names, values, strict=True))
        )
    if html is not None:
        comparison_report(result, a, b).write(html)
        typer.echo(f"wrote {html.resolve()}", err=True)


@app.command("selectivity")
def selectivity_command(
    workspace: Annotated[Path, typer.Argument(help="Workspace of a scan of labeled data")],
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", help="Recorded layer (repeatable; default: every recorded layer)"),
    ] = None,
    run: Annotated[int | None, typer.Option(min=1, help="Run (default: the latest complete scan)")] = None,
    html: Annotated[
        Path | None, typer.Option(help="Also write a page: per-class histograms of the most selective units")
    ] = None,
) -> None:
    """Class selectivity of each layer's units (Morcos et al. 2018's index over the classes' mean pooled
    activations): how many respond to one class only, how many to every class."""
    from deepscope.app.pages.atlas import selectivity_report
    from deepscope.atlas.workspace import open_workspace

    ws = open_workspace(workspace, run)
    results = [ws.selectivity(name) for name in layer or ws.layers]
    typer.echo(
        f"{'layer':16s} {'units':>6s} {'defined':>8s} {'mean index':>11s} {'one class':>10s} {'all classes':>12s}"
    )
    for result in results:
        summary = result.summary()
        typer.echo(
            f"{result.layer[:16]:16s} {summary['units']:6d} {summary['defined']:8d} {summary['mean_index']:11.3f} "
            f"{summary['one_class']:10d} {summary['all_classes']:12d}"
        )
    typer.echo(
        "index undefined: units with a negative class mean (record the layer after its ReLU) or never active"
    )
    if html is not None:
        selectivity_report(ws, results).write(html)
        typer.echo(f"wrote {html.resolve()}", err=True)


@app.command("clusters")
def clusters_command(
    workspace: Annotated[Path, typer.Argument(help="Workspace of a scan of the model")],
    model: ModelArgument,
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            help="Layer (repeatable, consecutive in the model; default: recorded conv / linear layers)",
        ),
    ] = None,
    k: Annotated[int, typer.Option(min=1, help="Clusters per layer")] = 4,
    run: Annotated[int | None, typer.Option(min=1, help="Run (default: the latest complete scan)")] = None,
    svg: Annotated[Path | None, typer.Option(help="Also write the node-link diagram of the clusters")] = None,
) -> None:
    """Neuron clusters (CNNVis): each layer's units clustered by their activations over the scanned data, joined
    by the summed absolute weights between clusters of consecutive layers."""
    from deepscope.atlas.clusters import neuron_clusters
    from deepscope.atlas.workspace import open_workspace
    from deepscope.render.graph_svg import cluster_graph_svg

    ws = open_workspace(workspace, run)
    result = neuron_clusters(ws, model, layer or None, k=k)
    for entry in result.layers:
        typer.echo(f"{entry.layer}: {entry.clusters} clusters")
        for cluster in range(entry.clusters):
            shown = [int(s) for s in entry.representatives[cluster] if s >= 0]
            typer.echo(f"  {cluster}: units {entry.members(cluster).tolist()}  samples {shown}")
    if svg is not None:
        thumbnails = ws.thumbnails
        picture = cluster_graph_svg(
            result, thumbnails, ws.indices if thumbnails is not None else None, ws.run.model
        )
        svg.write_text(picture)
        typer.echo(f"wrote {svg.resolve()}", err=True)


@app.command("concepts")
def concepts_command(
    model: ModelArgument,
    layer: Annotated[str, typer.Option(help="Layer name (see `deepscope graph MODEL`)")],
    data: Annotated[
        str, typer.Option(help="Data spec: mnist5k[:train|test], samples, python:mod:factory, or a folder")
    ],
    k: Annotated[int, typer.Option(min=1, help="Concepts: the k of k-means")] = 32,
    epochs: Annotated[int, typer.Option(min=0, help="Passes over the data moving the centers")] = 1,
    patches: Annotated[int, typer.Option(min=1, help="Nearest patches shown per concept")] = 9,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass")] = 64,
    out: Annotated[Path, typer.Option(help="The picture to write")] = Path("concepts.png"),
) -> None:
    """Visual concepts of a layer (Wang et al. 2015): k-means over its unit-normalized spatial feature vectors
    across a dataset (streamed), each concept shown by its nearest patches; prints sizes and, with labels, purity."""
    from deepscope.render.units import concept_grid
    from deepscope.units.concepts import concepts
    from deepscope.zoo.datasets import load_dataset
    from deepscope.zoo.loaders import load_model

    vm = load_model(model)
    found = concepts(
        vm, load_dataset(data, vm.labels), layer, k, batch_size=batch_size, epochs=epochs, patches=patches
    )
    typer.echo(f"{found.layer}: {found.k} concepts over {found.vectors:,} feature vectors")
    if found.purity is not None:
        typer.echo(f"purity against the labels: {found.purity:.1%}")
    for index in sorted(range(found.k), key=lambda j: -int(found.sizes[j])):
        line = f"  concept {index:3d}: {float(found.sizes[index]) / found.vectors:6.1%} of the vectors"
        if found.majority is not None and int(found.majority[index]) >= 0:
            majority = found.class_name(int(found.majority[index]))
            line += f", {float(found.concept_purity[index]):.0%} from class {majority}"
        typer.echo(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    concept_grid(found).save(out)
    typer.echo(f"wrote {out}")


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Argument(
            help="Model specs (default: zoo:efficientnet_lite0 on the bundled photos and zoo:lenet_mnist on "
            "mnist5k:test); two on one --data compare layer by layer, e.g. zoo:lenet_mnist zoo:mlp_mnist "
            "--data mnist5k:test"
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Data spec for every MODEL given (mnist5k:test, samples, a folder...)")
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(
            help="Directory of the workspaces (default ~/.cache/deepscope/workspaces); the only one opened"
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; beyond loopback a token is required")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one)")] = 8000,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser")] = False,
    device: Annotated[str, typer.Option(help="Device of the models: cpu, cuda, cuda:1...")] = "cpu",
    workers: Annotated[int, typer.Option(min=1, help="Threads running the models")] = 2,
    token: Annotated[
        str | None,
        typer.Option(envvar="DEEPSCOPE_TOKEN", help="Token to require (default: generated off loopback)"),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload, in MB")] = 20.0,
    max_megapixels: Annotated[float, typer.Option(min=0.000001, help="Largest upload, in megapixels")] = 40.0,
) -> None:
    """The workbench: serve the models in the browser (architecture, layers and units, heat maps, dataset).
    Prints the URL; Ctrl-C stops it."""
    from deepscope.app.server.serving import serve_workbench

    serve_workbench(
        model or [],
        data=data,
        root=workspace,
        host=host,
        port=port,
        browser=not no_browser,
        device=device,
        workers=workers,
        token=token,
        max_upload_mb=max_upload_mb,
        max_megapixels=max_megapixels,
    )


def main() -> None:
    """Entry point: deepscope's own errors print as one clear line and exit with status 2."""
    try:
        app()
    except DeepscopeError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None
    except OSError as error:  # a file the command reads or writes: its name and the reason, not a traceback
        if error.filename is None:
            raise
        typer.echo(f"error: {error.filename}: {error.strerror}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
