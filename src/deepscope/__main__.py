"""`python -m deepscope` runs the command line."""

from deepscope.cli import main

main()
