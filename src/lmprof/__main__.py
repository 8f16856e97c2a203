"""`python -m lmprof` runs the CLI."""

from lmprof.cli.main import entry_point

entry_point()
