"""``python -m edge.demo_people``: the recognition demo of ``make demo``.

The code lives in :mod:`edge.tools.demo_people`; this alias keeps the documented command working.
"""

import sys

from edge.tools.demo_people import main

if __name__ == "__main__":
    sys.exit(main())
