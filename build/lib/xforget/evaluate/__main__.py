"""``python -m xforget.evaluate ...``: the same as ``xforget-eval ...``."""

from .cli import main

if __name__ == "__main__":
    main()
