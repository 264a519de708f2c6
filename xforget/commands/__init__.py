"""The command-line programs, one module each; the top layer (nothing in the package imports them).

``xforget-train`` (:mod:`.train`), ``xforget-eval`` (:mod:`.evaluate`), ``xforget-compare``
(:mod:`.compare`), ``xforget-generate`` (:mod:`.generate`), ``xforget-export`` (:mod:`.export`),
``xforget-prepare`` (:mod:`.prepare`), the lm-eval front end (:mod:`.harness`), and the argument
helpers they share (:mod:`.args`).
"""
