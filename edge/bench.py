"""``python -m edge.bench`` (also ``poseface bench``): model latency side by side, or the device chain per stage.

The code lives in :mod:`edge.tools.bench`; this alias keeps the documented command working.
"""

import sys

from edge.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
