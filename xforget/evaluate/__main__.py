"""``python -m xforget.evaluate ...``: the same as ``xforget-eval ...``."""

from xforget.commands.evaluate import main

if __name__ == "__main__":
    main()
