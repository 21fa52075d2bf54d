"""Segmentation tasks as generator jobs (no Qt, no napari)."""
