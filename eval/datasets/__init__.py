"""Eval dataset readers: CLIP_benchmark shard folders, image folders, CSV/TSV tables, Karpathy
JSON, the record types they yield, and kind detection (:mod:`eval.datasets.kinds`)."""
