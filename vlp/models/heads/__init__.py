"""Optional heads by name (``model.heads``: {name: options}); see :mod:`vlp.models.heads.registry`.

A head module in this package defines a :class:`Head` subclass registered with
``@register_head("name")`` and is imported here, so that it is registered whenever heads are.
"""

from vlp.models.heads.registry import (ENCODER_OUTPUTS, HEADS, TOKEN_OUTPUTS, Head, build_head, check_heads,
                                       check_heads_with_terms,
                                       head_provides, register_head)
from vlp.models.heads import prototypes  # noqa: F401,E402  (registers the 'prototypes' head)
from vlp.models.heads import captioning  # noqa: F401,E402  (registers the 'caption' head)

__all__ = ["ENCODER_OUTPUTS", "HEADS", "TOKEN_OUTPUTS", "Head", "build_head", "check_heads", "check_heads_with_terms", "head_provides", "register_head"]
