"""Segmentation tasks as generators: plain arrays and a runner in, progress out, a result returned.

No Qt and no napari here; the widgets run these in workers, the API drains them
with :func:`napari_segsuite.core.progress.run_sync`.
"""
