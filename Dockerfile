# raider-bids, a BIDS App: PDFF, R2* and S0 maps from magnitude multi-echo gradient echo.
#
#   docker build -t raider-bids:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/bids:/bids:ro -v /data/out:/out \
#       raider-bids:0.1.0 /bids /out participant
#
# Build arguments:
#   TORCH_INDEX_URL  where torch comes from. The default CPU build keeps the image small; for GPU
#                    clusters use a CUDA build, e.g. https://download.pytorch.org/whl/cu126
#   PIP_OPTIONS      extra pip options, e.g. "--no-index --find-links /src/wheelhouse" to build
#                    offline from wheels put in ./wheelhouse (scripts/test-container.sh does so)
#   BASE_IMAGE       a Debian bookworm image (Debian's python3 is 3.11)
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*

FROM runtime AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_OPTIONS=""
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
# PIP_OPTIONS is split into words on purpose.
# hadolint ignore=SC2086
RUN python3 -m venv /opt/raider-bids \
 && /opt/raider-bids/bin/pip install --no-cache-dir ${PIP_OPTIONS} --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" \
 && /opt/raider-bids/bin/pip install --no-cache-dir ${PIP_OPTIONS} /src \
 && /opt/raider-bids/bin/raider-bids --version

FROM runtime
ARG VERSION=unknown
LABEL org.opencontainers.image.title="raider-bids" \
      org.opencontainers.image.description="BIDS App: PDFF, R2* and S0 maps from magnitude multi-echo gradient echo (dual self-supervised networks)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/raider-bids/raider-bids" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /opt/raider-bids /opt/raider-bids
# Any UID may run the image, HOME may be unwritable and the image read-only (Apptainer): every
# cache goes to /tmp, host Python packages are ignored, and the outputs name the image.
ENV PATH=/opt/raider-bids/bin:${PATH} \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/raider-bids-matplotlib \
    XDG_CACHE_HOME=/tmp/raider-bids-cache \
    TORCH_HOME=/tmp/raider-bids-torch \
    RAIDER_BIDS_CONTAINER=raider-bids:${VERSION}
RUN mkdir -p /bids /out /work
WORKDIR /tmp
ENTRYPOINT ["/opt/raider-bids/bin/raider-bids"]
CMD ["--help"]
