"""Workflows: the orchestration of a call, and nothing else.

    participant  for each selected run: load, mask, noise, estimate with every method, write the
                 outputs and their provenance; then a report per participant
    reruns       when a finished run's outputs still hold, and when they must be redone
    recording    what the provenance record of a run is filled with
    group        ROI statistics of the participant-level outputs, their data dictionary and a report
"""
