"""The coins strokes and reference mask of :mod:`napari_segsuite.demo.coins`, under their test-support name."""

from napari_segsuite.demo.coins import (
    COINS_CLASS_NAMES,
    STROKES_FILE,
    coins_reference_mask,
    coins_strokes,
    make_coins_strokes,
)

__all__ = ["COINS_CLASS_NAMES", "STROKES_FILE", "coins_reference_mask", "coins_strokes", "make_coins_strokes"]
