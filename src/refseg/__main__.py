"""``python -m refseg ...`` (and ``torchrun -m refseg ...``): the ``refseg`` command line."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="refseg")
