"""Training datasets out of napari and back in: COCO instance segmentation (RLE masks) and
ultralytics YOLO segmentation (polygons). Pure code: no Qt, no napari."""
