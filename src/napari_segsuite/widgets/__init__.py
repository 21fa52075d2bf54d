"""Thin dock widgets: they read layers, start jobs in workers and write results."""
