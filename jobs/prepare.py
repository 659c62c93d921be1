"""`ray job submit` entrypoint: `python jobs/prepare.py --help` lists the flags (same as `skinray prepare`)."""

import sys

from skinray.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
