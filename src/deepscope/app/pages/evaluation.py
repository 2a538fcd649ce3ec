"""The demo page's section "Can I trust this heat map?": every heat-map method through the metrics of
``deepscope.metrics`` on LeNet/MNIST and EfficientNet-Lite0/photos (see ``deepscope.app.demo``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from PIL import Image

from deepscope.attribution.base import method as method_spec
from deepscope.attribution.base import methods
from deepscope.metrics.evaluate import Evaluation, evaluate
from deepscope.metrics.registry import metric_info, metrics
from deepscope.render.curves import curve_plot, randomization_plot
from deepscope.render.html import Report
from deepscope.render.images import data_uri, scale_each, to_pil

# Sensitivity maps say how strongly a pixel would change the score, with a sign for the direction: ranked by
# magnitude. Attribution maps (input x gradient, integrated gradients, CAMs) keep their sign.
SENSITIVITY = [info.name for info in methods() if info.sensitivity]

LENET_METHODS = [
    "saliency",
    "input_x_gradient",
    method_spec("integrated_gradients", steps=16),
    method_spec("smoothgrad", samples=16),
    "guided_backprop",
    "deconvnet",
    "grad_cam",
]
# LeNet-5 runs every registered metric; these settings differ from the metrics' defaults (fewer samples and
# steps keep the section under a minute; the maps of the cascade are kept for the figure).
LENET_SETTINGS: dict[str, dict] = {
    "pixel_flipping": {"per_step": 8},
    "region_perturbation": {"region_size": 4},
    "infidelity": {"perturbation": "square", "patch": 4},
    "max_sensitivity": {"samples": 3},
    "randomization": {"keep_maps": True},
    "pointing_game": {"tolerance": 1},
}
LENET_METRICS: dict[str, dict] = {info.name: LENET_SETTINGS.get(info.name, {}) for info in metrics()}
# One pass per map keeps the section under a minute (integrated gradients would cost 16 per map and step).
PHOTO_METHODS = ["saliency", "input_x_gradient", "guided_backprop", "grad_cam"]
# The cascade on EfficientNet-Lite0 stops at a few checkpoints (each step randomizes everything above it).
PHOTO_CHECKPOINTS = ["_fc", "_blocks.14", "_blocks.10", "_blocks.5", "_conv_stem"]
PHOTO_METRICS: dict[str, dict] = {
    "deletion": {"per_step": 224 * 224 // 10},
    "insertion": {"per_step": 224 * 224 // 10},
    "randomization": {"layers": PHOTO_CHECKPOINTS, "keep_maps": True},
    "random_logit": {},
}


def random_maps(model: Any, x: torch.Tensor, target: Any) -> torch.Tensor:
    """The baseline every method should beat: uniform noise, fixed per input (seeded by its values), so that it
    also shows what ignoring the model looks like in the sanity checks."""
    seed = int(x.double().abs().sum().item() * 1000) % (2**31)
    return torch.rand(x.shape[0], 1, *x.shape[-2:], generator=torch.Generator().manual_seed(seed)).to(
        x.device
    )


def evaluation_section(report: Report, context: Any) -> None:
    section = report.section("Can I trust this heat map?")
    section.text(
        "Every gradient and CAM method of deepscope, and a random map as the baseline, measured with "
        "deepscope.metrics (ds.evaluate) on the model they explain. Faithfulness: pixel flipping and region "
        "perturbation (AOPC, Samek et al. 2017), deletion and insertion (AUC, Petsiuk et al. 2018), infidelity "
        "(Yeh et al. 2019). Robustness: max-sensitivity (Yeh et al. 2019). Sanity: cascading model-parameter "
        "randomization (Spearman rank correlation of |maps| to the trained model's, Adebayo et al. 2018) and "
        "the random-logit test (SSIM to the map of another class, Sixt et al. 2020). Localization: the pointing "
        "game on the digit's strokes (Zhang et al. 2018). Sensitivity maps (saliency, SmoothGrad, guided "
        "backprop, deconvnet) are ranked by magnitude; color maps are summed over channels."
    )

    lenet = context.lenet
    digits = context.digits.subset(range(0, 1000, 40))
    x = lenet.preprocess(digits.images)
    strokes = lenet.pixels(digits.images)[:, 0] > 0.5
    methods = {**{m if isinstance(m, str) else m.name: m for m in LENET_METHODS}, "random": random_maps}
    absolute = [name for name in SENSITIVITY if name in methods]
    result = evaluate(lenet, x, methods, LENET_METRICS, masks=strokes, absolute=absolute, batch_size=256)
    section.html(f"<h3>LeNet-5 on {x.shape[0]} held-out MNIST digits</h3>")
    _table(section, result)
    section.image(
        curve_plot(result.curves("pixel_flipping"), "pixel flipping, most relevant first", True, "logit"),
        "Pixel flipping: the class logit as the most relevant pixels are set to black, 8 per step.",
    )
    section.image(randomization_plot(result.randomizations()), "Cascading randomization, LeNet-5.")
    _randomization_maps(section, result, sample=1, size=84)
    section.text(_findings(result, "LeNet-5"))

    net = context.efficientnet
    photos = context.photos
    x = net.preprocess(list(photos.values()))
    absolute = [name for name in SENSITIVITY if name in PHOTO_METHODS]
    result = evaluate(
        net,
        x,
        {**{name: name for name in PHOTO_METHODS}, "random": random_maps},
        PHOTO_METRICS,
        absolute=absolute,
    )
    section.html(f"<h3>EfficientNet-Lite0 on the {x.shape[0]} bundled photos</h3>")
    _table(section, result)
    section.image(
        curve_plot(result.curves("deletion"), "deletion", False, "probability"),
        "Deletion: the class probability as the most relevant pixels turn black.",
    )
    section.image(
        curve_plot(result.curves("insertion"), "insertion", True, "probability"),
        "Insertion: the class probability as the most relevant pixels return into a blurred copy.",
    )
    section.image(randomization_plot(result.randomizations()), "Cascading randomization, EfficientNet-Lite0.")
    _randomization_maps(section, result, sample=0, size=112)
    section.text(_findings(result, "EfficientNet-Lite0"))


def _table(section: Any, result: Evaluation) -> None:
    columns = list(result.ranking.columns[:-1])
    means = result.table.pivot(index="method", columns="metric", values="mean")
    sems = result.table.pivot(index="method", columns="metric", values="sem")
    higher = {metric: metric_info(metric).higher_is_better for metric in columns}
    best = {
        metric: (means[metric].idxmax() if higher[metric] else means[metric].idxmin()) for metric in columns
    }
    header = ["method", *[f"{m.replace('_', ' ')} {'↑' if higher[m] else '↓'}" for m in columns]]
    rows = []
    for method in result.ranking.index:
        cells = [method]
        for metric in columns:
            mean, sem = means.loc[method, metric], sems.loc[method, metric]
            text = f"{mean:.3g}" + ("" if math.isnan(sem) else f" ± {sem:.2g}")
            cells.append(f"<b>{text}</b>" if best[metric] == method else text)
        cells.append(f"{result.ranking.loc[method, 'mean_rank']:.2f}")
        rows.append(cells)
    section.table([*header, "mean rank"], rows, raw=True)
    section.text(
        "Mean ± standard error over the samples; the best value of each column in bold; rows sorted by the mean "
        "of the per-metric ranks (1 = best)."
    )


def _randomization_maps(section: Any, result: Evaluation, sample: int, size: int) -> None:
    """Adebayo et al.'s figure: one input's |map| per method (rows) for the trained model and after each cascade
    step (columns), each scaled to its own range."""
    randomizations = result.randomizations()
    layers = next(iter(randomizations.values())).layers
    rows = []
    for method, randomization in randomizations.items():
        maps = torch.stack([result.maps[method][sample], *[m[sample] for m in randomization.maps or []]])
        scaled = scale_each(maps.abs().sum(1, keepdim=True).float().cpu())
        cells = []
        for picture in scaled:
            image = to_pil(picture).resize(
                (size, size), Image.NEAREST if picture.shape[-1] < size else Image.BILINEAR
            )
            cells.append(f'<img src="{data_uri(image)}" width="{size}" height="{size}" alt="">')
        rows.append([method, *cells])
    section.table(["method", "trained", *[f"down to {layer}" for layer in layers]], rows, raw=True)
    section.text(
        "One input's |map| (each scaled to its own range) for the trained model and after each step of the cascade, "
        "which randomizes every layer from the output down to the one named."
    )


FAILS_AT = 0.8  # Spearman of |maps| to the trained maps once the output layer is random


def _findings(result: Evaluation, model: str) -> str:
    means = result.table.pivot(index="method", columns="metric", values="mean")
    sentences = [f"{model}: best mean rank {result.ranking.index[0]}."]
    randomizations = {m: r for m, r in result.randomizations().items() if m != "random"}
    if randomizations:
        first_step = next(iter(randomizations.values())).layers[0]
        first = {m: float(r.similarity["spearman"][:, 0].nanmean()) for m, r in randomizations.items()}
        last = {m: float(r.similarity["spearman"][:, -1].nanmean()) for m, r in randomizations.items()}
        order = sorted(first, key=first.get, reverse=True)
        sentences.append(
            f"Spearman of |maps| to the trained model's once {first_step} is random / after the whole cascade: "
            + ", ".join(f"{m} {first[m]:.2f} / {last[m]:.2f}" for m in order)
            + "."
        )
        failing = [m for m in order if first[m] >= FAILS_AT]
        if failing:
            sentences.append(
                f"{' and '.join(failing)} barely change{'s' if len(failing) == 1 else ''} when the output layer "
                f"loses its weights (Spearman >= {FAILS_AT}): {'it fails' if len(failing) == 1 else 'they fail'} "
                "the parameter-randomization check, as Adebayo et al. found for guided backprop."
            )
        else:
            sentences.append(
                f"No method keeps a Spearman of {FAILS_AT} or more once the output layer is random."
            )
        sentences.append("The random baseline stays at 1: a map that ignores the model passes nothing.")
    if "random_logit" in means:
        column = means["random_logit"].drop("random", errors="ignore")
        sentences.append(
            f"Random logit: the map for another class is most alike for {column.idxmax()} (SSIM "
            f"{column.max():.2f}) and least for {column.idxmin()} ({column.min():.2f})."
        )
    return " ".join(sentences)
