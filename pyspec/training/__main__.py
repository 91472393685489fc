"""``python -m pyspec.training``: build the teacher data, then train drafts (see docs/training.md)."""

from pyspec.training.cli import main

if __name__ == "__main__":
    main()
