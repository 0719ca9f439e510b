"""The built text tower's side of the consistency checks: its context, vocabulary and pooling."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import nn


def open_clip_text(clip: nn.Module) -> Tuple[Optional[nn.Module], str]:
    """(the module holding token/positional embeddings, its state-dict prefix in open_clip's layout)
    of an open_clip model or one of our open_clip text towers; (None, '') for HF text towers."""
    if hasattr(clip, "token_embedding") and hasattr(clip, "positional_embedding"):
        return clip, ""
    text = getattr(clip, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "positional_embedding"):
        return text, "text."
    return None, ""


def open_clip_text_facts(text: Optional[nn.Module], clip: Optional[nn.Module] = None) -> Dict[str, Any]:
    """The built text tower's side of check_model_consistency's arguments (for an HF text tower
    of ``clip``, its token-embedding rows only)."""
    if text is None:
        hf = getattr(clip, "text", None)
        embeddings = getattr(getattr(hf, "transformer", None), "get_input_embeddings", None)
        if embeddings is None:
            return {"text_pool": "none"}
        return {"text_pool": "none", "model_token_rows": int(embeddings().weight.shape[0])}
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    return {"model_position_rows": int(text.positional_embedding.shape[0]),
            "model_context_length": int(text.context_length),
            "model_token_rows": int(text.token_embedding.weight.shape[0]),
            "text_pool": pool, "pool_eos_id": getattr(text, "text_eos_id", getattr(text, "eos_id", None))}
