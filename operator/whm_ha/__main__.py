"""``python -m whm_ha`` is the ``whm-ha`` command."""

import sys

from .cli import main

sys.exit(main())
