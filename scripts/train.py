#!/usr/bin/env python
"""Train a model: the same as ``xforget-train`` (Hydra overrides as arguments)."""

from xforget.commands.train import main

if __name__ == "__main__":
    main()
