#!/usr/bin/env bash
# Builds the kvfabric image (the seed's quick start step 1: `cd docker/libfabric && ./build.sh`).
#   IMAGE                  tag to build (default kvfabric:libfabric)
#   EFA_INSTALLER_VERSION  AWS EFA installer to put in the image (default 1.38.1; empty: no efa libfabric,
#                          the image then runs over tcp only)
#   PLATFORM               docker --platform (default linux/amd64: p4d/p5 nodes)
# A SmolLM2 fetched with `npm run fetch-model` is copied into the build context and becomes the image's
# default model; without it the image serves the tiny test model (pass --model or KVF_MODEL for others).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
image="${IMAGE:-kvfabric:libfabric}"
efa="${EFA_INSTALLER_VERSION-1.38.1}"
platform="${PLATFORM:-linux/amd64}"

smol="${KVF_MODEL_CACHE:-$HOME/.cache/kvfabric/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$root/models"
if [ -f "$smol" ] && [ ! -f "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  cp "$smol" "$root/models/"
fi

docker build --platform "$platform" --build-arg "EFA_INSTALLER_VERSION=$efa" -t "$image" -f "$root/Dockerfile" "$root"
echo "built $image (EFA installer: ${efa:-none})"
echo "next: docker tag $image public.ecr.aws/YOUR_REGISTRY/$image && docker push public.ecr.aws/YOUR_REGISTRY/$image"
