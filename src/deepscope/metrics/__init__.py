"""Can I trust this heat map? Faithfulness, robustness, sanity and localization metrics for heat maps.

Every metric takes ``(model, x, attributions, target, ...)``: a model, a preprocessed batch ``[B,C,H,W]``, the
maps to judge (``[B,C,H,W]`` or ``[B,1,H,W]``, at the input size) and the target they explain. Curve metrics
return a :class:`Curve` (``.curve`` ``[B, steps]``, ``.aopc``, ``.auc``); the others a tensor ``[B]`` or a
result object. Each is registered (:func:`metrics` lists them: what the score is, which way is better, what the
metric needs); :func:`evaluate` runs several methods through several metrics and ranks them.
"""

from deepscope.metrics._common import MetricError
from deepscope.metrics.evaluate import Evaluation, evaluate
from deepscope.metrics.faithfulness import (
    Curve,
    deletion,
    infidelity,
    insertion,
    pixel_flipping,
    region_perturbation,
)
from deepscope.metrics.localization import boxes_to_masks, pointing_game
from deepscope.metrics.registry import FAMILIES, MetricInfo, metric_info, metrics, register
from deepscope.metrics.robustness import max_sensitivity
from deepscope.metrics.sanity import (
    Randomization,
    fixed_target,
    random_logit,
    randomizable_layers,
    randomization,
)
from deepscope.metrics.similarity import pearson, spearman, ssim

__all__ = [
    "FAMILIES",
    "Curve",
    "Evaluation",
    "MetricError",
    "MetricInfo",
    "Randomization",
    "boxes_to_masks",
    "deletion",
    "evaluate",
    "fixed_target",
    "infidelity",
    "insertion",
    "max_sensitivity",
    "metric_info",
    "metrics",
    "pearson",
    "pixel_flipping",
    "pointing_game",
    "random_logit",
    "randomizable_layers",
    "randomization",
    "region_perturbation",
    "register",
    "spearman",
    "ssim",
]
