"""Model families behind one runner interface, and the offline-first model store.

Nothing here imports torch, transformers, ultralytics or segment_anything at
module level; each family module imports its library inside its functions.
"""

from napari_segsuite.models.offline import guard_llvm_clash

guard_llvm_clash()
