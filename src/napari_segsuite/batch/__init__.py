"""Batch segmentation at scale: many files, large images in chunks, locally or on a cluster.

The pieces (all pure Python, no Qt):

- :mod:`.inputs`: expand files, folders, globs and zarr/OME-Zarr into :class:`~.inputs.Item` s
  and read them lazily.
- :mod:`.tasks`: the registered tasks, plain functions ``(image2d, runner, **params) ->
  (labels2d, table)``.
- :mod:`.chunking`: a large plane in overlapping chunks; ids made unique per chunk and objects
  on chunk borders merged (union-find on ids that overlap in the halo).
- :mod:`.engine`: one job per item on a thread pool, a local dask cluster of processes or an
  existing ``dask.distributed`` scheduler; atomic outputs with ``.done.json`` sidecars (resume),
  failures collected with their reasons.
- :mod:`.manifest`: the run manifest (model, checksum, parameters, versions).

The command line (``napari-segsuite run``) and :func:`napari_segsuite.api.run_batch` are thin
layers over :func:`.engine.batch_job`.
"""
