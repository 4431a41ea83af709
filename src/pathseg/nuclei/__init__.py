"""Nucleus segmentation: measurements and outlines of labelled nuclei (automatic and interactive modes come later)."""
