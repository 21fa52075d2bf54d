"""Rewrite ``src/napari_segsuite/data/coins_strokes.npy``, the shipped U-Net training strokes.

Run ``python benchmarks/make_coins_strokes.py``. The strokes are lines through
rows of coins (label 2) and through background gaps (label 1), drawn by
:func:`napari_segsuite.testing.coins.make_coins_strokes`; with ``--png`` an
overlay picture is written too.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Write the strokes file and print what it covers."""
    from napari_segsuite.testing.coins import (
        STROKES_FILE,
        coins_reference_mask,
        make_coins_strokes,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", help="also write an overlay of strokes and reference outline here")
    args = parser.parse_args(argv)
    ref = coins_reference_mask()
    strokes = make_coins_strokes(ref)
    STROKES_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.save(STROKES_FILE, strokes)
    n = int(np.count_nonzero(strokes))
    print(f"{STROKES_FILE}: {n} labelled pixels ({n / strokes.size:.2%}); "
          f"background {int((strokes == 1).sum())}, coin {int((strokes == 2).sum())}")
    if args.png:
        from skimage import color, data, io, segmentation

        rgb = color.gray2rgb(data.coins())
        rgb[segmentation.find_boundaries(ref)] = (255, 255, 0)
        rgb[strokes == 1] = (0, 90, 255)
        rgb[strokes == 2] = (255, 40, 40)
        io.imsave(args.png, rgb, check_contrast=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
