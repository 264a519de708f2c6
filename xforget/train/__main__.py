"""``python -m xforget.train ...``: the same as ``xforget-train ...``."""

from xforget.commands.train import main

if __name__ == "__main__":
    main()
