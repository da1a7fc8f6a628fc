"""``python -m service`` is the ``chronicle`` command."""

from service.cli import run

run()
