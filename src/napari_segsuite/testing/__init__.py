"""Test support: what the test suite and the benchmarks use and the plugin never does.

Tiny models and the coins strokes live in :mod:`napari_segsuite.demo` (the
smoke steps and the sample data ship them); the modules here of the same
names re-export them for the tests. Shipped code never imports this package
(``tests/test_import_contract.py``).
"""
