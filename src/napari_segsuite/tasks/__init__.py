"""Tasks: the compute behind each widget, as generators and plain functions (no Qt, no napari)."""
