"""``python -m napari_segsuite`` runs the command line."""

import sys

from napari_segsuite.cli import main

sys.exit(main())
