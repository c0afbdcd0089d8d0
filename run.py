#!/usr/bin/env python3
"""BIDS-App entry point: run.py bids_dir output_dir participant [options]."""

from raider_bids.cli import run

if __name__ == "__main__":
    run()
