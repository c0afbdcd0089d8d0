"""Synthetic datasets with known truth, run through the app itself: the demo
(`raider-bids-demo`) and the paper's in silico experiment (`raider-bids-insilico`)."""
