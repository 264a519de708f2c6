#!/usr/bin/env python
"""Train a model: the same as ``xforget-train`` (Hydra overrides as arguments)."""

from xforget.train.cli import main

if __name__ == "__main__":
    main()
