"""``python -m pairdata``: see :mod:`pairdata.cli`."""

from pairdata.cli import main

raise SystemExit(main())
