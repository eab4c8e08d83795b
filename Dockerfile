# syntax=docker/dockerfile:1
# kvfabric image: frontend, prefill and decode workers and `kvfabric doctor`, for EKS with EFA
# (kubernetes/libfabric/deployment.yaml). Build with docker/libfabric/build.sh.
#
# Stage 1 builds the native addon (cmake-js, C++17) and the TypeScript exactly as CI does: the apt line
# below is .ci/run's and scripts/setup.sh's package list (test/dockerfile.test.ts keeps the three in sync),
# and the build is scripts/setup.sh itself, so every CI run exercises these steps.
# Stage 2 is the runtime: node, Debian's libfabric1 (tcp, shm: enough for a cluster without EFA) and,
# when EFA_INSTALLER_VERSION is set, the AWS EFA installer's libfabric with the efa provider in
# /opt/amazon/efa. kvfabric dlopens libfabric at run time, so the same image serves both: on EFA nodes
# the ConfigMap sets KVF_LIBFABRIC=/opt/amazon/efa/lib/libfabric.so.1 (docs/deploy-eks.md).
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends libfabric-dev libfabric-bin libgtest-dev pkg-config cmake make g++ etcd-server curl openssl iproute2 nftables chromium \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/kvfabric
COPY . .
# npm ci (addon via cmake-js, TypeScript via tsc), as CI runs it; then the tiny test model as the fallback
# default model, and only production dependencies for the runtime.
RUN ./scripts/setup.sh \
 && node scripts/make-tiny-model.mjs models/tiny-llama.gguf \
 && npm prune --omit=dev --no-audit --no-fund \
 && find build -mindepth 1 -maxdepth 1 ! -name Release -exec rm -rf {} + \
 && rm -rf test benchmarks examples

FROM ${NODE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# libfabric1: the library kvfabric loads by default; libfabric-bin: fi_info (kvfabric doctor, troubleshooting);
# ibverbs-utils: ibv_devices, the seed's "EFA Not Detected" check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libfabric1 libfabric-bin ibverbs-utils ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The AWS EFA installer's user-space part only (no kernel module: the node has it): libfabric with the efa
# provider and rdma-core, in /opt/amazon/efa. Skipped when the argument is empty (CI, non-EFA clusters).
ARG EFA_INSTALLER_VERSION=""
RUN if [ -n "$EFA_INSTALLER_VERSION" ]; then \
      apt-get update && apt-get install -y --no-install-recommends curl tar \
      && cd /tmp && curl -fsSLO "https://efa-installer.amazonaws.com/aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" \
      && tar xzf "aws-efa-installer-${EFA_INSTALLER_VERSION}.tar.gz" \
      && cd aws-efa-installer && ./efa_installer.sh -y --skip-kmod --skip-limit-conf --no-verify \
      && cd / && rm -rf /tmp/aws-efa-installer* /var/lib/apt/lists/*; \
    fi
COPY --from=build /opt/kvfabric /opt/kvfabric
RUN printf '#!/bin/sh\nexec node /opt/kvfabric/dist/cli/main.js "$@"\n' > /usr/local/bin/kvfabric && chmod +x /usr/local/bin/kvfabric
# SmolLM2 is used when the build context had it in models/ (build.sh copies a fetched one there), else the tiny model.
ENV KVF_MODEL_CACHE=/opt/kvfabric/models NODE_ENV=production
WORKDIR /opt/kvfabric
EXPOSE 8000 50051 50052
ENTRYPOINT ["kvfabric"]
CMD ["--help"]
