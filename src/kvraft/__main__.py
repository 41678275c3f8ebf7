"""``python -m kvraft`` is the ``kvraft`` command."""

from kvraft.cli import main

if __name__ == "__main__":
    main()
