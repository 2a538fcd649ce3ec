"""What units encode: activations, filters, top-k dataset patches, deconvnet projections, feature visualization,
inversion (by optimization and by a trained decoder) and visual concepts."""

from deepscope.units import transforms
from deepscope.units.concepts import Concepts, concepts
from deepscope.units.deconv import project
from deepscope.units.facets import multifaceted_init
from deepscope.units.featurevis import Visualization, visualize
from deepscope.units.inversion import Inversion, invert, invert_layers
from deepscope.units.inverter import (
    InversionComparison,
    Inverter,
    compare_inversions,
    load_inverter,
    train_inverter,
)
from deepscope.units.maps import activations, filters
from deepscope.units.objectives import (
    Objective,
    alpha_norm,
    channel,
    deepdream,
    direction,
    diversity,
    logit,
    neuron,
    objective,
    per_image,
    total_variation,
)
from deepscope.units.patches import TopPatches, top_patches
from deepscope.units.regularizers import Yosinski, yosinski
from deepscope.units.topk import TopK

__all__ = [
    "Concepts",
    "Inversion",
    "InversionComparison",
    "Inverter",
    "Objective",
    "TopK",
    "TopPatches",
    "Visualization",
    "Yosinski",
    "activations",
    "alpha_norm",
    "channel",
    "compare_inversions",
    "concepts",
    "deepdream",
    "direction",
    "diversity",
    "filters",
    "invert",
    "invert_layers",
    "load_inverter",
    "logit",
    "multifaceted_init",
    "neuron",
    "objective",
    "per_image",
    "project",
    "top_patches",
    "total_variation",
    "train_inverter",
    "transforms",
    "visualize",
    "yosinski",
]
