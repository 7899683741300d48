"""The ``refseg`` command (``refseg ...``, ``python -m refseg ...``, ``torchrun -m refseg ...``).

The program's process settings are chosen here, before anything imports torch (torch reads
``THP_MEM_ALLOC_ENABLE`` once, when it is imported): :func:`refseg.runtime.tune_cpu_memory`.
"""

from __future__ import annotations


def main() -> None:
    from .runtime import tune_cpu_memory

    tune_cpu_memory()  # before torch is imported (refseg.cli imports it)
    from .cli import main as cli_main

    cli_main(prog_name="refseg")


if __name__ == "__main__":
    main()
