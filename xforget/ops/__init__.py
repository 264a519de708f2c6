"""Functional attention ops: forgetting attention (FoX) with O(n)-memory backends.

>>> from xforget.ops import forgetting_attention, attend

See :func:`forgetting_attention` for the maths and the backends
("reference", "fold", "chunked", "decode", "flex", "fla", "cuda"), and :func:`attend` for the
entry point used by the attention layer.  Every kernel implements the interface
of :mod:`xforget.ops.backend` (one :class:`~xforget.ops.backend.AttentionCall`
in, the output out); :func:`xforget.ops.dispatch.route` is the one routing
decision.
"""

from xforget.ops.dispatch import BACKENDS, attend, forgetting_attention, resolve_backend

__all__ = ["BACKENDS", "attend", "forgetting_attention", "resolve_backend"]
