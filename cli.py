"""`python cli.py ...` is the same as `edgekit ...` (for a checkout without an install)."""
from edgekit.cli import main

if __name__ == "__main__":
    main()
