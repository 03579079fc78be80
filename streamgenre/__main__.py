"""``python -m streamgenre`` is the ``streamgenre`` command."""

import sys

from streamgenre.apps.cli import main

sys.exit(main())
