"""One colour per scheme, the same in every plot of a comparison and across comparisons.

Before, each plot numbered the schemes it drew (``C0``, ``C1``, ... over its own list, which differs
when a plot draws only the schemes that have its data), and the FoX-vs-RoPE plot used fixed colours:
one scheme changed colour between the plots of one comparison. Now the preset names have fixed
colours (FoX red, RoPE blue, as in the FoX paper's figures), and any other name gets one from its CRC32,
which does not depend on which schemes are drawn.
"""

from __future__ import annotations

import zlib

_FIXED = {"rotary": "C0", "fox_pro": "C1", "fox_rotary": "C2", "fox": "C3", "fox_value_residual": "C4",
          "alibi": "C5", "t5": "C6", "none": "C7", "nope": "C7", "absolute": "C8", "gpt": "C8", "sinusoidal": "C9",
          "dynamic": "tab:olive"}
_OTHERS = ("tab:brown", "tab:pink", "tab:cyan", "tab:gray", "darkgreen", "navy", "goldenrod", "indigo")


def scheme_color(name: str) -> str:
    """The matplotlib colour of scheme ``name`` (a preset name, or any other)."""
    return _FIXED.get(name) or _OTHERS[zlib.crc32(name.encode()) % len(_OTHERS)]
