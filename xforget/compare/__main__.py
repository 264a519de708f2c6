"""``python -m xforget.compare ...``: the same as ``xforget-compare ...``."""

from xforget.commands.compare import main

if __name__ == "__main__":
    main()
