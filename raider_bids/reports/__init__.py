"""Reports, made from the outputs on disk: ROI statistics (the group table), the agreement
between methods, and the HTML pages with their figures. Torch-free; knows no estimator.

    roistats    ROI statistics and the group table's data dictionary
    comparison  agreement statistics between two methods' maps
    figures     the figures (matplotlib, object API)
    pages       the participant and group HTML pages
"""
