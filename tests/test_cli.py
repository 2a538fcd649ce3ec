"""The deepscope command, run as a user would."""

from __future__ import annotations

import sys

import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

import deepscope as ds
from deepscope.app import cli

runner = CliRunner()


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(paths[name])
    return paths


def test_predict_puts_a_cat_first_for_chelsea_and_espresso_for_coffee(photo_files):
    result = runner.invoke(
        cli.app,
        ["predict", "zoo:efficientnet_lite0", str(photo_files["chelsea"]), str(photo_files["coffee"])],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    cat_line = lines[1]
    assert int(cat_line.split()[2]) in range(281, 286), cat_line
    coffee_first = lines[lines.index(str(photo_files["coffee"])) + 1]
    assert coffee_first.split()[3] in ("espresso", "cup"), coffee_first


def test_models_and_graph_commands():
    listing = runner.invoke(cli.app, ["models"])
    assert "zoo:efficientnet_lite0" in listing.output and "torchvision:" in listing.output
    summary = runner.invoke(cli.app, ["graph", "zoo:efficientnet_lite0", "--depth", "1"])
    assert summary.exit_code == 0
    assert "_blocks" in summary.output and "1x320x7x7" in summary.output and "traced by fx" in summary.output


def test_help_texts_survive_rich_markup():
    """Typer renders help with rich markup, which silently drops what looks like a style tag, e.g. the
    ``[ray]`` of ``pip install 'deepscope[ray]'``; such brackets must be escaped."""
    import typer.main
    from rich.text import Text

    group = typer.main.get_command(cli.app)
    texts = [group.help or ""]
    for command in group.commands.values():
        texts += [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
    assert any("[" in text for text in texts)  # the check below has brackets to look at
    for text in texts:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), text


def test_the_package_and_the_help_load_without_torch():
    """`import deepscope` and `deepscope --help` took 4 s (torch, torchvision, scipy); names load on first use."""
    import subprocess

    probe = (
        "import sys, deepscope, deepscope.app.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import deepscope as ds\n"
        "missing = [name for name in ds.__all__ if getattr(ds, name, None) is None]\n"
        "assert not missing, missing\n"
        "assert ds.atlas.scan and ds.zoo.datasets.mnist5k and ds.workspace.Store and ds.__version__\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_every_count_option_has_a_lower_bound():
    """A zero or negative batch size, depth, k... is a usage error naming the option, not a traceback from the
    library underneath (`graph --depth 0` printed a ValueError's traceback)."""
    import typer.main

    unbounded = [
        f"{name} --{param.name}"
        for name, command in typer.main.get_command(cli.app).commands.items()
        for param in command.params
        if param.type_descriptor.annotation in (int, list[int]) and getattr(param, "min", None) is None
    ]
    assert not unbounded
    result = runner.invoke(cli.app, ["graph", "zoo:lenet_mnist", "--depth", "0"])
    assert result.exit_code == 2 and "--depth" in result.output and result.exception is not None
    assert not isinstance(result.exception, ValueError)


def test_demo_writes_a_self_contained_page(tmp_path):
    result = runner.invoke(cli.app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = tmp_path / "index.html"
    assert str(page.resolve()) in result.output
    html = page.read_text()
    sections = ["Predictions", "Architecture", "First-layer filters", "What units encode", "Heat maps"]
    sections += ["Can I trust this heat map?", "Dataset atlas"]
    sections += ["Concepts, weight images and decoder inversion"]
    sections += ["Selectivity, neuron clusters and two networks"]
    for expected in (*sections, "<svg", "data:image/png;base64"):
        assert expected in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


def test_errors_print_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for argv, message in [
        (["predict", "zoo:efficientnet_lite", str(text)], "Did you mean: efficientnet_lite0"),
        (["predict", "zoo:lenet_mnist", str(text)], "is not an image file"),
    ]:
        monkeypatch.setattr(sys, "argv", ["deepscope", *argv])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_explain_writes_overlays_a_grid_and_the_passes(photo_files, tmp_path):
    result = runner.invoke(
        cli.app,
        [
            "explain",
            "zoo:efficientnet_lite0",
            str(photo_files["coffee"]),
            "-m",
            "grad_cam,saliency",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "explaining class 967 (espresso)" in result.output
    assert "layer of grad_cam: _swish@1" in result.output
    assert "passes through the model: 2 forward + 1 backward" in result.output  # + the one-sample probe
    assert {p.name for p in tmp_path.iterdir()} == {"coffee_grad_cam.png", "coffee_saliency.png", "grid.png"}


def test_explain_takes_method_options_in_their_types(photo_files, tmp_path):
    result = runner.invoke(
        cli.app,
        [
            "explain",
            "zoo:efficientnet_lite0",
            str(photo_files["coffee"]),
            "-m",
            "integrated_gradients,grad_cam",
            "-o",
            "steps=2",
            "-o",
            "grad_cam.upsample=false",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    # 2 path points forward and backward, after a forward for the top class; the shared pass; the probe
    assert "passes through the model: 5 forward + 3 backward" in result.output
    methods = runner.invoke(cli.app, ["methods"])
    assert (
        "options: steps: int = 50; rule: str = 'gausslegendre'; baseline: float | Tensor = 0.0"
        in methods.output
    )


def test_explain_refuses_an_option_no_method_has(monkeypatch, photo_files, capsys):
    argv = [
        "deepscope",
        "explain",
        "zoo:lenet_mnist",
        str(photo_files["coffee"]),
        "-m",
        "saliency",
        "-o",
        "steps=3",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "none of saliency has an option 'steps'" in capsys.readouterr().err


def test_image_files_are_read_in_the_models_mode(photo_files, tmp_path):
    digit = tmp_path / "digit.png"
    ds.datasets.mnist5k().images[0].save(digit)
    # evaluate read image files as RGB whatever the model, so a grayscale model refused its own digits
    result = runner.invoke(
        cli.app,
        [
            "evaluate",
            "zoo:lenet_mnist",
            str(digit),
            str(digit),
            "--methods",
            "saliency",
            "--metrics",
            "deletion",
            "--out",
            str(tmp_path / "evaluation"),
        ],
    )
    assert result.exit_code == 0, result.output
    gray = tmp_path / "gray.png"
    Image.open(photo_files["chelsea"]).convert("L").save(gray)
    refused = runner.invoke(cli.app, ["predict", "zoo:efficientnet_lite0", str(gray)])
    assert refused.exit_code != 0 and "--convert" in str(refused.exception)
    converted = runner.invoke(
        cli.app, ["predict", "zoo:efficientnet_lite0", str(gray), "--convert", "--top", "1"]
    )
    assert converted.exit_code == 0, converted.output
    assert int(converted.output.splitlines()[1].split()[2]) in range(281, 286)  # still a cat


def test_explain_names_an_unknown_method(monkeypatch, photo_files, capsys):
    monkeypatch.setattr(
        sys, "argv", ["deepscope", "explain", "zoo:lenet_mnist", str(photo_files["coffee"]), "-m", "grad_cm"]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "unknown heat-map method 'grad_cm'. Did you mean: grad_cam" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["--help", "models", "methods", "metrics"])
def test_the_listings_answer_without_importing_torch(command):
    """Each cost about 3 s and 950 MB importing torch; the listings are read from the stored catalog."""
    import subprocess

    probe = (
        "import sys\n"
        "from deepscope.app.cli import main\n"
        f"sys.argv = ['deepscope', {command!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip()


def test_the_stored_catalog_is_the_registries():
    """The listings `models`, `methods` and `metrics` print come from catalog.json; it must say what the
    registries hold (after adding a model, method or metric: python -m deepscope.app.catalog)."""
    from deepscope.app.catalog import listings, stored

    for kind, text in listings().items():
        assert stored(kind) == text, f"catalog.json is stale for {kind}: run python -m deepscope.app.catalog"


def test_output_paths_that_cannot_be_written_are_one_line_errors(monkeypatch, capsys, photo_files, tmp_path):
    """explain, evaluate, units, scan and graph --svg gave 37-47 line tracebacks for an output under a file or in
    a read-only place, after doing their work; they now refuse first, in one line, and create missing folders."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    photo = str(photo_files["coffee"])
    commands = [
        ["explain", "zoo:lenet_mnist", photo, "--convert", "--out", str(blocker / "maps")],
        ["evaluate", "zoo:lenet_mnist", "mnist5k:test", "--methods", "saliency", "--out", str(blocker / "e")],
        ["units", "zoo:lenet_mnist", "--layer", "conv1", "--out", str(blocker / "u")],
        ["scan", "zoo:lenet_mnist", "mnist5k:test", "--out", str(blocker / "ws")],
        ["graph", "zoo:lenet_mnist", "--svg", str(blocker / "g.svg")],
    ]
    for argv in commands:
        monkeypatch.setattr(sys, "argv", ["deepscope", *argv])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(error) <= 2, (argv, error)  # a loading line, then the error
        assert str(blocker) in error[-1] and error[-1].startswith("error: "), error
    missing = tmp_path / "new" / "deeper" / "graph.svg"
    assert runner.invoke(cli.app, ["graph", "zoo:lenet_mnist", "--svg", str(missing)]).exit_code == 0
    assert missing.is_file()


def test_long_commands_show_progress_and_take_a_limit(tmp_path):
    scanned = runner.invoke(
        cli.app, ["scan", "zoo:lenet_mnist", "mnist5k:test", "--limit", "40", "--out", str(tmp_path / "ws")]
    )
    assert scanned.exit_code == 0, scanned.output
    assert "40 samples scanned" in scanned.output and "loading zoo:lenet_mnist" in scanned.output
    assert len(ds.atlas.open_workspace(tmp_path / "ws").indices) == 40
    units = runner.invoke(
        cli.app,
        [
            "units",
            "zoo:lenet_mnist",
            "--layer",
            "conv1",
            "--data",
            "mnist5k:test",
            "--limit",
            "30",
            "--steps",
            "2",
            "--unit",
            "0",
            "--out",
            str(tmp_path / "units"),
        ],
    )
    assert units.exit_code == 0, units.output
    assert "wrote" in units.output and " s)" in units.output  # each picture with the time so far
    assert "done in" in units.output  # the loading stage
