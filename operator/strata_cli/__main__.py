"""`python -m strata_cli ...` runs the `strata` command."""

from .main import main

main()
