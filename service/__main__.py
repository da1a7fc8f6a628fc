"""``python -m service`` is the ``chronicle`` command."""

import sys

from service.cli import main

sys.exit(main())
