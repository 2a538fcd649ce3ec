"""`python -m deepscope` runs the command line."""

from deepscope.app.cli import main

main()
