"""`python -m tokensense.cli`: the `tokensense` command (how `dashboard --web` starts each browser session)."""

from __future__ import annotations

import sys

from tokensense.cli.commands import main

sys.exit(main())
