"""``python -m edge.enroll`` (also ``poseface enroll``): add, list, remove, export, import people.

The code lives in :mod:`edge.app.enroll`; this alias keeps the documented command working.
"""

import sys

from edge.app.enroll import main

if __name__ == "__main__":
    sys.exit(main())
