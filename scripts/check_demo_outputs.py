"""Checks a demo run's outputs (scripts/test-container.sh, scripts/test-slurm.sh).

    python check_demo_outputs.py OUT_DIR CONTAINER_TAG|- LABEL [LABEL ...]

Every participant has its maps, provenance and report; the group table's per-tissue PDFF medians
(ROIs = the demo's true tissue segmentation) are within 0.03 of the truth; the dataset names the
container image ('-': no container). Exit 1 with the reasons otherwise."""

import csv
import json
import sys
from pathlib import Path

from raider_bids.experiments.demo import TISSUES

TOLERANCE = 0.03


def main(out: Path, tag: str, labels: list[str]) -> list[str]:
    problems = []
    description = json.loads((out / "dataset_description.json").read_text())
    container = description["GeneratedBy"][0].get("Container")
    if tag != "-" and (container or {}).get("Tag") != tag:
        problems.append(f"GeneratedBy.Container is {container}, expected Tag {tag}")
    for label in labels:
        anat = out / f"sub-{label}" / "anat"
        for suffix in ("PDFFmap.nii.gz", "R2starmap.nii.gz", "S0map.nii.gz", "LLRmap.nii.gz",
                       "desc-foreground_mask.nii.gz", "provenance.json"):
            if not (anat / f"sub-{label}_{suffix}").is_file():
                problems.append(f"missing {anat / f'sub-{label}_{suffix}'}")
        if not (out / f"sub-{label}.html").is_file():
            problems.append(f"missing report sub-{label}.html")
    with open(out / "group_roistats.tsv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r["map"] == "PDFF"]
    for label in labels:
        for name, tissue in TISSUES.items():
            found = [r for r in rows if r["participant_id"] == f"sub-{label}" and r["roi"] == name]
            if len(found) != 1:
                problems.append(f"sub-{label} {name}: {len(found)} PDFF rows in group_roistats.tsv")
            elif abs(float(found[0]["median"]) - tissue.pdff) > TOLERANCE:
                problems.append(f"sub-{label} {name}: PDFF median {found[0]['median']}, truth {tissue.pdff}")
    if not (out / "group.html").is_file():
        problems.append("missing group.html")
    return problems


if __name__ == "__main__":
    found = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
    for problem in found:
        print(f"check: {problem}", file=sys.stderr)
    print(f"check: {'FAILED' if found else 'ok'}: {sys.argv[1]}, participants {' '.join(sys.argv[3:])}")
    sys.exit(1 if found else 0)
