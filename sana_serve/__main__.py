"""`python -m sana_serve ...` is the `sana-serve` command."""
import sys

from sana_serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
