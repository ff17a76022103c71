"""The generator of docs/api.md (``python -m tools.apidoc > docs/api.md``)."""
