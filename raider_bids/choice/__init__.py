"""Which of each voxel's two candidates, water- or fat-dominant, is kept: per voxel by likelihood
(the paper), or over the run's grid by graph cut (spatial). Works on candidate arrays in mask
order; knows nothing of the estimators that made them."""

from .sides import SideChoice, choose_sides

__all__ = ["SideChoice", "choose_sides"]
