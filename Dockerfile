# Dataflow custom container for vlcurate's CPU workers (GPU workers: Dockerfile.gpu).
# Build:  docker build -t REGION-docker.pkg.dev/PROJECT/REPO/vlcurate:0.1.0 .
# Use:    vlcurate build recipe.yaml --runner DataflowRunner -- \
#           --project=PROJECT --region=REGION --temp_location=gs://BUCKET/tmp \
#           --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/vlcurate:0.1.0
# The Beam SDK in the image must equal the launcher's (2.77.0, pinned in constraints.txt);
# tests/test_dockerfiles.py checks both pins against pyproject.toml and constraints.txt.
FROM apache/beam_python3.11_sdk:2.77.0

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# MALLOC_ARENA_MAX: 2 glibc malloc arenas per process, as the local runner gives its
# workers (README, Runners): many fetch threads otherwise keep freed image buffers.
ENV NO_ALBUMENTATIONS_UPDATE=1 \
    MALLOC_ARENA_MAX=2 \
    WANDB_MODE=disabled \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/vlcurate
# setup.py compiles the interleave stage's walk (vlcurate/interleave/_speedups.c) with the
# image's C compiler; without one it installs the Python walk (same documents, slower).
COPY constraints.txt pyproject.toml setup.py README.md ./
COPY vlcurate ./vlcurate
# The CPU builds of the pinned torch and torchvision (no CUDA libraries on CPU workers)
# satisfy the constraints, so the install of everything else, apache-beam included,
# keeps them.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
        --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -c constraints.txt /opt/vlcurate

# Beam's worker boot program must stay the entrypoint for Dataflow Runner v2.
ENTRYPOINT ["/opt/apache/beam/boot"]
