#!/usr/bin/env bash
# Build the serving image: `make image` (cpu) and `make image-gpu` (gpu) run this.
#
#   deploy/image/build.sh cpu|gpu
#
# 1. the base image: with podman (or when named localhost/...), the local Debian + Python base
#    (deploy/image/base-image.sh) when it is not there yet;
# 2. the bentofile (deploy/image/bentofile.py -> build/image/bentofile-<variant>.yaml): the
#    repository's bentofile.yaml plus the published models the service would serve, the serving
#    packages pinned to requirements.lock, and the base image;
# 3. `bentoml build`, then `bentoml containerize` with Docker when `docker info` works, else podman.
#
# Settings (environment; the Makefile passes its variables of the same names):
#   CONTAINER_BACKEND  docker or podman                      (auto)
#   BASE_IMAGE         base of the CPU image                 (podman: the local Debian base;
#                                                             docker: BentoML's python:3.11-slim)
#                      `default` forces BentoML's default, a localhost/... name is built here
#   GPU_BASE_IMAGE     base of the GPU image                 (BASE_IMAGE's choice)
#   IMAGE, GPU_IMAGE   image names                           (bertserve, bertserve-gpu)
#   ORT_PKG_GPU        onnxruntime-gpu requirement           (onnxruntime-gpu==1.31.1)
#   GPU_ORT_EXTRAS     its extras: cuda,cudnn bring CUDA 13 and cuDNN from PyPI; empty for a
#                      base image with CUDA 13 and cuDNN 9    (cuda,cudnn)
#   IMAGE_MODELS       store tags to package                 (what `make serve` would serve)
#   CONTAINERIZE_OPTS  more `bentoml containerize` arguments
# Writes build/image/<variant>.json: image, bento, base, size, build seconds (image_test.py reads it).
set -euo pipefail
variant=${1:-cpu}
[[ $variant == cpu || $variant == gpu ]] || { echo "usage: $0 cpu|gpu" >&2; exit 2; }
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-localhost/bertserve-python:bookworm}
export BENTOML_DO_NOT_TRACK=true
say() { echo "image($variant): $*"; }
started=$SECONDS

backend=${CONTAINER_BACKEND:-}
if [[ -z $backend ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then backend=docker; else backend=podman; fi
fi
command -v "$backend" >/dev/null || { echo "no $backend: install podman (apt-get install podman runc) or Docker" >&2; exit 1; }

if [[ $variant == cpu ]]; then
  image=${IMAGE:-bertserve}
  base=${BASE_IMAGE:-}
else
  image=${GPU_IMAGE:-bertserve-gpu}
  base=${GPU_BASE_IMAGE:-${BASE_IMAGE:-}}
fi
if [[ -z $base ]]; then
  if [[ $backend == podman ]]; then base=$LOCAL_BASE_IMAGE; else base=default; fi
fi
[[ $base == default ]] && base=""

# 1. base image
if [[ $base == localhost/* ]] && ! "$backend" image inspect "$base" >/dev/null 2>&1; then
  say "building the base image $base"
  ENGINE=$backend BASE_IMAGE=$base deploy/image/base-image.sh
fi
base_s=$((SECONDS - started))

# 2. bentofile
bentofile=build/image/bentofile-$variant.yaml
args=(--variant "$variant" --base-image "$base" --output "$bentofile"
      --ort-package "${ORT_PKG_GPU:-onnxruntime-gpu==1.31.1}" --ort-extras "${GPU_ORT_EXTRAS-cuda,cudnn}")
[[ -n ${IMAGE_MODELS:-} ]] && args+=(--models "$IMAGE_MODELS")
"$BIN/python" deploy/image/bentofile.py "${args[@]}"

# 3. bento and image
t=$SECONDS
bento=$("$BIN/bentoml" build -f "$bentofile" -o tag . | sed -n 's/^__tag__://p' | tail -1)
[[ -n $bento ]] || { echo "bentoml build did not report a tag" >&2; exit 1; }
bento_s=$((SECONDS - t))
say "bento $bento (${bento_s}s)"

t=$SECONDS
version=${bento#*:}
opts=(--backend "$backend" -t "$image:$version" -t "$image:latest")
[[ $backend == podman || $backend == docker ]] && opts+=(--opt network=host)
# From /: BentoML 1.4 copies the Bento to a temporary directory and refuses to read its Dockerfile
# template there unless that directory lies under the working directory ("Accessing file outside
# of current working directory is not allowed").
bentoml=$(cd "$(dirname "$BIN/bentoml")" && pwd)/bentoml
# shellcheck disable=SC2086  # CONTAINERIZE_OPTS is a list of arguments
(cd / && "$bentoml" containerize "$bento" "${opts[@]}" ${CONTAINERIZE_OPTS:-})
containerize_s=$((SECONDS - t))

ref=$image:latest
[[ $backend == podman ]] && ref=localhost/$image:latest
size=$("$backend" image inspect --format '{{.Size}}' "$ref")
total_s=$((SECONDS - started))
mkdir -p build/image
cat >"build/image/$variant.json" <<EOF
{"variant": "$variant", "image": "$ref", "tag": "$image:$version", "bento": "$bento",
 "backend": "$backend", "base_image": "${base:-BentoML default}", "size_bytes": $size,
 "seconds": {"base_image": $base_s, "bento_build": $bento_s, "containerize": $containerize_s, "total": $total_s}}
EOF
say "$ref ($image:$version): $((size / 1000000)) MB, built in ${total_s}s (base ${base_s}s, bento ${bento_s}s, containerize ${containerize_s}s)"
