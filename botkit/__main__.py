"""``python -m botkit`` runs the ``botkit`` command."""

from botkit.cli import main

if __name__ == "__main__":
    main()
