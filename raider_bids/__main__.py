"""`python -m raider_bids bids_dir output_dir participant|group [options]`."""

import sys

from .cli import main

sys.exit(main())
