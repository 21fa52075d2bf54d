"""Model families behind one runner interface, and the offline-first model store.

Nothing here imports torch, transformers, ultralytics or segment_anything at
module level; each family module imports its library inside its functions,
with the libraries' offline switches on only around those calls
(:func:`napari_segsuite.models.offline.offline`).
"""
