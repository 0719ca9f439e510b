"""Objectives: each module registers its terms with ``vlp.losses.registry.register_term``."""

from vlp.losses import captioning, contrastive, geometry, hard_negatives, intra_modal, prototype, sigmoid  # noqa: F401
