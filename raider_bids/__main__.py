"""`python -m raider_bids bids_dir output_dir participant|group [options]`."""

from .cli import run

run()
