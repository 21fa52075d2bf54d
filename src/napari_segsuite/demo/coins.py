"""The coins image with sparse training strokes, and a careful reference mask of its coins.

- :func:`coins_reference_mask` segments scikit-image's ``coins`` the classic
  way (scikit-image's "Comparing edge-based and region-based segmentation"
  example): markers for sure background (< 30) and sure coin (> 150), a
  marker-controlled watershed on the Sobel gradient, holes filled. It is the
  reference the trained U-Net is measured against (tests, benchmark).
- :func:`make_coins_strokes` draws the strokes a user would paint: a few
  3-pixel-wide lines through rows of coins and a few lines through background
  gaps, labelled ``1`` (background) and ``2`` (coin), ``0`` elsewhere
  (unlabelled). Where a drawn line crosses the edge of a coin it is left
  unlabelled (as a careful user lifts the brush there), so every stroke pixel
  lies at least 3 pixels inside its class. The result covers about 3.5 % of the
  image; ``napari_segsuite/data/coins_strokes.npy`` is this array
  (``python benchmarks/make_coins_strokes.py`` rewrites it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Class names of the shipped strokes: label value -> name.
COINS_CLASS_NAMES = {1: "background", 2: "coin"}
STROKES_FILE = Path(__file__).resolve().parents[1] / "data" / "coins_strokes.npy"

# (row0, col0, row1, col1): lines through coins (class 2) and background (class 1).
_COIN_LINES = [
    (40, 20, 40, 370),    # through the top row of coins
    (190, 30, 190, 370),  # through the third row
    (255, 30, 268, 370),  # through the bottom row (darker coins)
]
_BACKGROUND_LINES = [
    (5, 150, 5, 375),     # top margin
    (100, 15, 180, 15),   # left margin
    (160, 380, 260, 380),  # right margin
    (84, 20, 84, 250),    # between the first and second rows
    (160, 100, 160, 300),  # between the second and third rows
]


def coins_reference_mask() -> np.ndarray:
    """A careful coin mask of ``skimage.data.coins()``: marker watershed on the Sobel gradient.

    Returns
    -------
    ndarray of bool
        (303, 384), True on coins.
    """
    from scipy import ndimage as ndi
    from skimage import data, filters, segmentation

    image = data.coins()
    elevation = filters.sobel(image)
    markers = np.zeros_like(image, dtype=np.uint8)
    markers[image < 30] = 1
    markers[image > 150] = 2
    regions = segmentation.watershed(elevation, markers)
    mask = ndi.binary_fill_holes(regions == 2)
    # Remove specks that are not coins.
    lab, n = ndi.label(mask)
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= 50
    return keep[lab]


def _line(mask: np.ndarray, r0: int, c0: int, r1: int, c1: int, width: int = 3) -> None:
    from skimage.draw import line

    rr, cc = line(r0, c0, r1, c1)
    half = width // 2
    for dr in range(-half, half + 1):
        r = np.clip(rr + dr, 0, mask.shape[0] - 1)
        mask[r, np.clip(cc, 0, mask.shape[1] - 1)] = True


def make_coins_strokes(reference: np.ndarray | None = None) -> np.ndarray:
    """Sparse strokes on the coins image: 0 unlabelled, 1 background, 2 coin.

    Parameters
    ----------
    reference : ndarray of bool, optional
        The coin mask deciding which part of a line is coin and which
        background (:func:`coins_reference_mask` by default).

    Returns
    -------
    ndarray of uint8
        (303, 384).
    """
    from scipy import ndimage as ndi

    ref = coins_reference_mask() if reference is None else np.asarray(reference, bool)
    inside_coin = ndi.binary_erosion(ref, iterations=2)
    inside_background = ndi.binary_erosion(~ref, iterations=2, border_value=1)
    coin_lines = np.zeros(ref.shape, bool)
    for r0, c0, r1, c1 in _COIN_LINES:
        _line(coin_lines, r0, c0, r1, c1)
    background_lines = np.zeros(ref.shape, bool)
    for r0, c0, r1, c1 in _BACKGROUND_LINES:
        _line(background_lines, r0, c0, r1, c1)
    strokes = np.zeros(ref.shape, np.uint8)
    strokes[(background_lines | coin_lines) & inside_background] = 1
    strokes[coin_lines & inside_coin] = 2
    return strokes


def coins_strokes() -> np.ndarray:
    """The shipped strokes (``data/coins_strokes.npy``): 0 unlabelled, 1 background, 2 coin."""
    return np.load(STROKES_FILE)
