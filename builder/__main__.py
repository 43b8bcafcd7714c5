"""`python -m mkosi_initrd_builder` runs the mkosi-initrd-build command line."""

import sys

from .cli import main

sys.exit(main())
