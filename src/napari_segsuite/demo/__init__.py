"""Shipped demo material: tiny randomly initialised models of the real architectures and the coins strokes.

The widgets' smoke steps (``napari-segsuite view --smoke``) build these tiny
models into temporary folders, and the "coins with strokes" sample reads the
strokes. Each builder writes a checkpoint in its library's real on-disk
format, so loading it goes through exactly the code a user's real checkpoint
takes. The test suite uses them too (through :mod:`napari_segsuite.testing`);
nothing here imports the test support.
"""
