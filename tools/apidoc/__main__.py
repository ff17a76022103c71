"""``python -m tools.apidoc > docs/api.md``: write the API reference to stdout."""

from tools.apidoc.generator import main

raise SystemExit(main())
