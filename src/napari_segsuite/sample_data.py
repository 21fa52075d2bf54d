"""Sample images from scikit-image (shipped with the package, no download)."""

from __future__ import annotations

import numpy as np


def coins():
    """Greyscale coins, 303 x 384 uint8."""
    from skimage import data

    return [(data.coins(), {"name": "coins"}, "image")]


def cell():
    """Greyscale cell (phase contrast), 660 x 550 uint8."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def astronaut():
    """RGB astronaut, 512 x 512 x 3 uint8."""
    from skimage import data

    return [(data.astronaut(), {"name": "astronaut", "rgb": True}, "image")]


def make_coins_stack(n_planes: int = 8, shift: int = 4) -> np.ndarray:
    """A z-stack of the coins image, each plane shifted ``shift`` pixels to the right."""
    from skimage import data

    base = data.coins()
    return np.stack([np.roll(base, k * shift, axis=1) for k in range(n_planes)])


def coins_stack():
    """A small synthetic z-stack (8 planes) of shifted coins, anisotropic scale."""
    return [(make_coins_stack(), {"name": "coins stack", "scale": (2.0, 1.0, 1.0)}, "image")]


def coins_strokes():
    """Coins with a few painted training strokes (1 = background, 2 = coin), for the U-Net."""
    from skimage import data

    from napari_segsuite.demo.coins import COINS_CLASS_NAMES, coins_strokes

    names = COINS_CLASS_NAMES
    features = {"index": list(names), "label": list(names), "class_name": list(names.values())}
    return [
        (data.coins(), {"name": "coins"}, "image"),
        (coins_strokes(), {"name": "coins strokes", "features": features, "opacity": 0.9}, "labels"),
    ]
