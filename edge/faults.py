"""``python -m edge.faults`` (also ``poseface faults``): the fault-injection campaign on real parts.

The code lives in :mod:`edge.tools.faults`; this alias keeps the documented command working.
"""

import sys

from edge.tools.faults import main

if __name__ == "__main__":
    sys.exit(main())
