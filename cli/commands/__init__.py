"""One module per `cas` command; each has `register(subparsers, common)` and a `run`."""
