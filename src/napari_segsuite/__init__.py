"""napari-segsuite: deep-learning segmentation for napari.

Importing this package is cheap: it pulls in none of torch, transformers,
ultralytics or segment_anything. The scripting surface lives in
:mod:`napari_segsuite.api`; napari finds the widgets through ``napari.yaml``.
"""

from napari_segsuite._version import __version__

__all__ = ["__version__"]
