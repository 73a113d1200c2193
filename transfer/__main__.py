"""``python -m transfer`` is the ``xfer`` command."""

from .cli import run

run()
