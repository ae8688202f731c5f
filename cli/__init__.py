"""The `cas` command line: a thin shell over the `cas` library, one module per command."""
