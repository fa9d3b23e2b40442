"""``python -m fededge.cli``: the ``fededge`` command."""

from fededge.cli.main import main

raise SystemExit(main())
