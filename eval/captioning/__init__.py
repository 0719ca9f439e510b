"""Captioning evaluation: caption metrics (BLEU, CIDEr-D, METEOR, SPICE), batched caption
generation over eval datasets, and the ``python -m eval caption`` command."""
