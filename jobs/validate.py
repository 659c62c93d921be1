"""`ray job submit` entrypoint: `python jobs/validate.py --help` lists the flags (same as `skinray validate`).

The doctor's checks for these arguments (reachable URIs, a GPU when asked for) run first.
"""

import sys

from skinray.cli import main

if __name__ == "__main__":
    sys.exit(main(["validate", *sys.argv[1:]], preflight=True))
