"""Run the ``ringcomm`` command as ``python -m ringcomm``."""

from ringcomm.cli import main

raise SystemExit(main())
