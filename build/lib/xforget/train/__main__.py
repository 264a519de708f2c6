"""``python -m xforget.train ...``: the same as ``xforget-train ...``."""

from .cli import main

if __name__ == "__main__":
    main()
