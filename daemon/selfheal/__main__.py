"""`python -m selfheal` runs the command-line interface."""

from selfheal.cli import main

main()
