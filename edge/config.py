"""``python -m edge.config`` (also ``poseface config``): validate a runtime config and print it as JSON.

The code lives in :mod:`edge.app.config.load`; this alias keeps the documented command working.
"""

import sys

from edge.app.config.load import main

if __name__ == "__main__":
    sys.exit(main())
