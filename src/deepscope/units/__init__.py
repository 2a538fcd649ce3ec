"""What units encode: activations, filters, top-k dataset patches, deconvnet projections, feature visualisation
and inversion."""

from deepscope.units.topk import TopK

__all__ = ["TopK"]
