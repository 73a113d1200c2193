"""``python -m transfer`` is the ``xfer`` command."""

from .cli import main

raise SystemExit(main())
