"""Pure compute: numpy only, no Qt, no napari, no deep-learning library at import."""
