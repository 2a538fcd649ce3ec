"""The `deepscope` command: thin wrappers over library calls, printing text and writing files."""

from __future__ import annotations

import json
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


@app.command()
def models() -> None:
    """List the bundled models and the spec schemes deepscope loads."""
    from deepscope.zoo.loaders import SCHEMES, list_models

    typer.echo("Bundled (offline):")
    for spec, description in list_models().items():
        typer.echo(f"  {spec:26s} {description}")
    typer.echo("\nSchemes: " + ", ".join(f"{scheme}:" for scheme in SCHEMES))
    typer.echo(
        "  torchvision:NAME          weights from the local torch hub cache (?weights=none: random init)"
    )
    typer.echo("  timm:NAME                 ?weights=none or ?checkpoint=PATH (needs timm)")
    typer.echo("  torchscript:PATH          a saved TorchScript archive")
    typer.echo("  python:pkg.module:factory a function returning a torch.nn.Module")


@app.command()
def predict(
    model: ModelArgument,
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    top: Annotated[int, typer.Option(help="How many classes to show per image")] = 5,
) -> None:
    """Top classes with probabilities for each image."""
    from deepscope.zoo.images import load_images
    from deepscope.zoo.loaders import load_model

    vm = load_model(model)
    pictures = load_images(images, mode=vm.image_mode)
    probabilities, indices = vm.predict(vm.preprocess(pictures), k=top)
    for path, probs, classes in zip(images, probabilities, indices, strict=True):
        typer.echo(f"{path}")
        for rank, (p, i) in enumerate(zip(probs.tolist(), classes.tolist(), strict=True), start=1):
            typer.echo(f"  {rank}. {p:7.2%}  {i:4d}  {vm.label(i)}")


@app.command("graph")
def graph_command(
    model: ModelArgument,
    depth: Annotated[
        int | None, typer.Option(help="Collapse modules deeper than this many dotted levels")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the graph as JSON")] = False,
    svg: Annotated[Path | None, typer.Option(help="Also write a node-link diagram to this SVG file")] = None,
) -> None:
    """The architecture graph as a text table (or JSON), with output shapes and parameter counts."""
    from deepscope.probe.graph import graph
    from deepscope.render.graph_svg import graph_svg
    from deepscope.zoo.loaders import load_model

    vm = load_model(model)
    dataflow = graph(vm, depth=depth)
    typer.echo(json.dumps(dataflow.to_dict(), indent=1) if as_json else dataflow.summary())
    if svg is not None:
        svg.write_text(graph_svg(dataflow, vm.name))
        typer.echo(f"wrote {svg}", err=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the page")] = Path("deepscope-demo"),
) -> None:
    """Write the demo page (bundled models and data, everything offline) and print its path."""
    from deepscope.demo import build_demo

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
        typer.Option("--layer", help="Layer to record (repeatable, globs, NAME:input); first = embedding"),
    ] = None,
    engine: Annotated[str, typer.Option(help="local, or ray (pip install 'deepscope[ray]')")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (engine=ray); default: a local Ray")
    ] = None,
    actors: Annotated[
        int | None, typer.Option(help="Ray actors (default: one per GPU, else CPUs / 2)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass")] = 64,
    chunk_size: Annotated[
        int, typer.Option(help="Samples per committed chunk (the resume granularity)")
    ] = 512,
    k: Annotated[int, typer.Option(help="Top samples kept per unit")] = 16,
) -> None:
    """Scan a dataset with a model in one pass into a workspace (resumable: run it again after an interruption)."""
    from deepscope.atlas import scan

    ws = scan(
        model,
        data,
        layer or None,
        engine,
        out=out,
        batch_size=batch_size,
        chunk_size=chunk_size,
        k=k,
        progress=True,
        address=address,
        actors=actors,
    )
    labels = ws.labels
    typer.echo(f"{ws.path}: {len(ws.indices)} samples scanned, {len(ws.skipped)} skipped")
    for index, source, error in ws.skipped[:20]:
        typer.echo(f"  skipped {index} {source}: {error}")
    if len(ws.skipped) > 20:
        typer.echo(f"  ... and {len(ws.skipped) - 20} more (see the samples table)")
    if labels is not None:
        known = labels >= 0
        typer.echo(
            f"accuracy {float((ws.predictions[known] == labels[known]).mean()):.2%} on {int(known.sum())} labelled samples"
        )
    typer.echo(f"layers: {', '.join(ws.layers)} (embedding: {ws.embedding_layer})")


@app.command("compare")
def compare_command(
    workspace_a: Annotated[Path, typer.Argument(help="Workspace of the first model's scan")],
    workspace_b: Annotated[Path, typer.Argument(help="Workspace of the second model's scan (same data)")],
    html: Annotated[
        Path | None, typer.Option(help="Also write a page: CKA heat map and both confusion matrices")
    ] = None,
) -> None:
    """Compare two scans of the same data: linear CKA between every pair of layers (pooled activations) and the
    two confusion matrices side by side."""
    from deepscope.atlas import compare, open
    from deepscope.atlas.report import comparison_report

    a, b = open(workspace_a), open(workspace_b)
    result = compare(a, b)
    typer.echo(f"A: {a.run.model} ({workspace_a})  accuracy {result.accuracy_a:.2%}")
    typer.echo(f"B: {b.run.model} ({workspace_b})  accuracy {result.accuracy_b:.2%}")
    typer.echo(f"same prediction on {result.agreement:.2%} of {len(a.indices)} samples")
    width = max(len(name) for name in result.layers_a)
    typer.echo("linear CKA (rows: A, columns: B)")
    typer.echo(" " * (width + 1) + " ".join(f"{name[:8]:>8s}" for name in result.layers_b))
    for name, row in zip(result.layers_a, result.cka, strict=True):
        typer.echo(f"{name:{width}s} " + " ".join(f"{value:8.3f}" for value in row))
    if html is not None:
        comparison_report(result, a, b).write(html)
        typer.echo(f"wrote {html.resolve()}", err=True)


def main() -> None:
    """Entry point: deepscope's own errors print as one clear line and exit with status 2."""
    try:
        app()
    except DeepscopeError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
