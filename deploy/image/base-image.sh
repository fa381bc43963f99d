#!/usr/bin/env bash
# Build the local base image for `make image` where no container registry is reachable:
# a minimal Debian (debootstrap) imported as an image, plus a layer with Debian's Python 3.11,
# pip and the build host's CA bundle (deploy/image/Containerfile.python).
#
#   deploy/image/base-image.sh [--install-tools] [--force]
#
# Idempotent: an existing image is kept unless --force. Settings (environment):
#   BASE_IMAGE     the image to build                 (localhost/bertserve-python:bookworm)
#   ROOTFS_IMAGE   the bare Debian image under it     (localhost/debian-base:bookworm)
#   ENGINE         podman or docker                   (docker when `docker info` works, else podman)
#   DEBIAN_SUITE   Debian release                     (bookworm: its python3 is 3.11, as the project)
#   DEBIAN_MIRROR  apt mirror                         (http://deb.debian.org/debian)
#   CA_BUNDLE      CA certificates copied in          (/etc/ssl/certs/ca-certificates.crt)
# --install-tools  apt-get installs podman, runc and debootstrap when missing (root, Debian/Ubuntu;
#                  or INSTALL_TOOLS=1).
#
# With podman, a probe container is started first; when it fails (as on hosts where crun cannot
# use the cgroups or the default ulimits are refused), a containers.conf drop-in selecting runc
# and no default ulimits is written (/etc/containers/containers.conf.d/ for root, else
# ~/.config/containers/containers.conf.d/) and the probe repeated.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/bertserve-python:bookworm}
ROOTFS_IMAGE=${ROOTFS_IMAGE:-localhost/debian-base:bookworm}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
HERE=$(cd "$(dirname "$0")" && pwd)
[[ ${INSTALL_TOOLS:-} == 1 ]] && INSTALL_TOOLS=1 || INSTALL_TOOLS=0
FORCE=0
for arg in "$@"; do
  case $arg in
    --install-tools) INSTALL_TOOLS=1 ;;
    --force) FORCE=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "base-image: $*"; }
die() { echo "base-image: $*" >&2; exit 1; }

if [[ $BASE_IMAGE != localhost/* ]]; then
  say "BASE_IMAGE=$BASE_IMAGE is not a localhost/ image: nothing to build here"
  exit 0
fi

if [[ -z ${ENGINE:-} ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi

need_tools=()
command -v debootstrap >/dev/null || need_tools+=(debootstrap)
if [[ $ENGINE == podman ]]; then
  command -v podman >/dev/null || need_tools+=(podman)
  command -v runc >/dev/null || need_tools+=(runc)
fi
if ((${#need_tools[@]})); then
  if ((INSTALL_TOOLS)); then
    [[ $(id -u) == 0 ]] || die "installing ${need_tools[*]} needs root"
    say "installing ${need_tools[*]} with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap
  else
    die "missing ${need_tools[*]}: apt-get install podman runc debootstrap (or run with --install-tools)"
  fi
fi

exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

if exists "$BASE_IMAGE" && ((!FORCE)); then
  say "$BASE_IMAGE exists ($ENGINE); nothing to do (--force rebuilds)"
  exit 0
fi

# 1. The bare Debian image.
if ! exists "$ROOTFS_IMAGE" || ((FORCE)); then
  [[ $(id -u) == 0 ]] || die "debootstrap needs root (or build $ROOTFS_IMAGE elsewhere)"
  rootfs=$(mktemp -d /tmp/bertserve-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  say "debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  security=${DEBIAN_MIRROR%/debian}/debian-security
  {
    echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main"
    echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main"
    if [[ $DEBIAN_MIRROR == */debian ]]; then echo "deb $security $DEBIAN_SUITE-security main"; fi
  } >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  say "importing it as $ROOTFS_IMAGE"
  tar -C "$rootfs" -c . | "$ENGINE" import - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# 2. Can this engine run a container? (podman: fix containers.conf if not.)
probe() { "$ENGINE" run --rm --network host "$ROOTFS_IMAGE" true >/dev/null 2>&1; }
if ! probe; then
  [[ $ENGINE == podman ]] || die "$ENGINE cannot run $ROOTFS_IMAGE: $("$ENGINE" run --rm --network host "$ROOTFS_IMAGE" true 2>&1 | tail -1)"
  if [[ $(id -u) == 0 ]]; then confd=/etc/containers/containers.conf.d
  else confd=${XDG_CONFIG_HOME:-$HOME/.config}/containers/containers.conf.d; fi
  mkdir -p "$confd"
  cat >"$confd/50-bertserve.conf" <<'EOF'
# Written by bertserve's deploy/image/base-image.sh: the default OCI runtime failed on this host.
# runc instead of crun (crun could not use the cgroups here), and no default ulimits (raising
# RLIMIT_NOFILE was refused: "error setting rlimit type 7: operation not permitted").
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
  say "podman could not start a container; wrote $confd/50-bertserve.conf (runc, no default ulimits)"
  probe || die "podman still cannot run a container: $(podman run --rm --network host "$ROOTFS_IMAGE" true 2>&1 | tail -1)"
fi

# 3. The Python layer.
[[ -r $CA_BUNDLE ]] || die "no CA bundle at $CA_BUNDLE (set CA_BUNDLE)"
ctx=$(mktemp -d /tmp/bertserve-base.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$HERE/Containerfile.python" "$ctx/Containerfile"
cp "$CA_BUNDLE" "$ctx/ca-bundle.crt"
say "building $BASE_IMAGE (Debian python3, pip, venv) with $ENGINE"
"$ENGINE" build --network host --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" -t "$BASE_IMAGE" -f "$ctx/Containerfile" "$ctx"
say "$BASE_IMAGE: $("$ENGINE" run --rm --network host "$BASE_IMAGE" python3 --version)"
