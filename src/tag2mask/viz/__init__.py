"""Palettes, overlays, figures and the HTML run report."""
