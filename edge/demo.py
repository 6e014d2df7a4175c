"""``python -m edge.demo`` (also ``poseface demo``): the device chain on real photos, annotated.

The code lives in :mod:`edge.tools.demo`; this alias keeps the documented command working.
"""

import sys

from edge.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
