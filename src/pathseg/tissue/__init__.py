"""Tissue and gland segmentation (PathSegDiff): class maps and data first; features, head and CLI to come."""
