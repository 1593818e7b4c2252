"""``python -m lvseg ...``, the same as the ``lvseg`` command."""
import sys

from lvseg.cli import main

sys.exit(main())
