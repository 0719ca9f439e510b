"""Encoding for eval tasks: the :class:`~eval.encoding.encoder.Encoder` (embedding cache, data
parallel, lazy model load), the model sources it encodes with, batching, image/text embedding
helpers and top-k search."""
