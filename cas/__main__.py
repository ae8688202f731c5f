"""`python -m cas` runs the `cas` command (for environments without the console script)."""

from cas_cli.main import entry

if __name__ == "__main__":
    entry()
