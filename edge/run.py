"""``python -m edge.run`` (also ``poseface run``): the runtime, what the systemd service runs.

The code lives in :mod:`edge.app.run`; this alias keeps the documented command working.
"""

import sys

from edge.app.run import main

if __name__ == "__main__":
    sys.exit(main())
