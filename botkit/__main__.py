"""``python -m botkit`` runs the ``botkit`` command."""

from botkit.cli import main

main()
