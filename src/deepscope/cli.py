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
def units(
    model: ModelArgument,
    layer: Annotated[str, typer.Option(help="Layer name (see `deepscope graph MODEL`)")],
    data: Annotated[
        str | None, typer.Option(help="mnist5k[:train|test], samples, or a folder of images")
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for the pictures")] = Path("deepscope-units"),
    unit: Annotated[
        list[int] | None, typer.Option("--unit", help="Units to show (repeat; default: the first 8)")
    ] = None,
    k: Annotated[int, typer.Option(help="Top patches per unit")] = 9,
    steps: Annotated[int, typer.Option(help="Feature-visualisation steps")] = 128,
) -> None:
    """What a layer's units encode: filters, activations, top-k patches with deconvnet projections, feature
    visualisations and an inversion, written as PNG files."""
    from deepscope.probe.layers import get_layer
    from deepscope.unit_pictures import data_from_spec, write_unit_pictures
    from deepscope.zoo.loaders import load_model

    vm = load_model(model)
    get_layer(vm, layer)
    dataset = data_from_spec(data, vm) if data is not None else None
    for path in write_unit_pictures(vm, layer, out, dataset, unit or None, k=k, steps=steps):
        typer.echo(f"wrote {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Directory for the page")] = Path("deepscope-demo"),
) -> None:
    """Write the demo page (bundled models and data, everything offline) and print its path."""
    from deepscope.demo import build_demo

    path = build_demo(out)
    typer.echo(f"wrote {path.resolve()}")


def main() -> None:
    """Entry point: deepscope's own errors print as one clear line and exit with status 2."""
    try:
        app()
    except DeepscopeError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
