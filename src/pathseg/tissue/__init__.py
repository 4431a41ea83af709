"""Tissue and gland segmentation (PathSegDiff): class maps, diffusion features; head, training and CLI to come."""
