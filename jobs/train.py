"""`ray job submit` entrypoint: `python jobs/train.py --help` lists the flags (same as `skinray train`)."""

import sys

from skinray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
