#!/usr/bin/env python
"""Compare positional schemes: the same as the ``xforget-compare`` console script.

    python scripts/compare.py positions=[none,fox] data=shakespeare \\
        data.path=../shared/data/tinyshakespeare.txt trainer.max_steps=300 seeds=[0,1]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xforget.commands.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
