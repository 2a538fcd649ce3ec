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
        int | None, typer.Option(help="Class to explain (default: each image's top class)")
    ] = None,
    layer: Annotated[
        str | None, typer.Option(help="Layer of the layer-space methods (default: found)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Model inputs per forward for expanding methods")
    ] = None,
) -> None:
    """Heat maps of each image with each method: one overlay PNG per image and method, and grid.png."""
    from deepscope.attribution.base import method_names
    from deepscope.attribution.explain import explain as explain_batch
    from deepscope.render.heatmap import grid, heatmap
    from deepscope.zoo.images import load_images
    from deepscope.zoo.loaders import load_model

    method_names(method)  # a wrong name fails before anything is loaded
    vm = load_model(model)
    pictures = load_images(images, mode=vm.image_mode)
    pixels = vm.pixels(pictures) if vm.transform is None else None
    x = vm.preprocess(pictures)
    maps = explain_batch(vm, x, method, target=target, layer=layer, batch_size=batch_size)
    _, top = vm.predict(x, k=1)
    explained = [target if target is not None else int(top[i, 0]) for i in range(len(images))]
    backgrounds = pixels if pixels is not None else pictures
    out.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(images):
        typer.echo(f"{path}: explaining class {explained[index]} ({vm.label(explained[index])})")
        for name, batch in maps.items():
            written = heatmap(batch[index], backgrounds[index], method=name).save(
                out / f"{path.stem}_{name}.png"
            )
            typer.echo(f"  {name:24s} {written}")
    labels = [vm.label(c) for c in explained]
    typer.echo(f"grid: {grid(dict(maps), backgrounds, labels=labels, cell=160).save(out / 'grid.png')}")
    for name, layer_name in maps.layers.items():
        typer.echo(f"layer of {name}: {layer_name}")
    typer.echo(f"passes through the model: {maps.passes}")


@app.command()
def methods() -> None:
    """The heat-map methods: name, family, cost in passes, reference."""
    from deepscope.attribution.base import methods as registered

    for info in registered():
        typer.echo(f"{info.name:30s} {info.family:13s} {info.passes}")
        typer.echo(f"{'':30s} {info.reference}")


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
