"""Whole-slide processing: tissue detection, tiling with halo, resumable runs (in progress)."""
