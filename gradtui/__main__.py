from __future__ import annotations

from gradtui.cli import main

raise SystemExit(main())
