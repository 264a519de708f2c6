"""``python -m xforget.compare ...``: the same as ``xforget-compare ...``."""

from .cli import main

if __name__ == "__main__":
    main()
