"""`ray job submit` entrypoint: `python jobs/evaluate.py --help` lists the flags (same as `skinray evaluate`)."""

import sys

from skinray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
