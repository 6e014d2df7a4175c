"""``python -m edge.calibrate`` (also ``poseface calibrate``): per-yaw-bin match thresholds on real CFP pairs.

The code lives in :mod:`edge.tools.calibrate`; this alias keeps the documented command working.
"""

import sys

from edge.tools.calibrate import main

if __name__ == "__main__":
    sys.exit(main())
