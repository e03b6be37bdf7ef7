"""``python -m cali_reg``: the same as the ``cali-reg`` command."""

from cali_reg.cli import main

main()
