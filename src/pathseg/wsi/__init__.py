"""Whole-slide processing: tissue detection, chunks with a halo, resumable runs, streamed outputs, Dask workers."""
