#!/usr/bin/env bash
# Build and try out the migrunner image without a Docker engine (buildah, vfs, chroot isolation).
#
# Why this script exists: CI machines here have buildah but no Docker daemon and cannot reach
# Docker Hub. When the base image cannot be pulled and is a Debian bookworm image, it is made
# from `debootstrap --variant=minbase bookworm` (what debian:bookworm-slim is built from) and
# committed locally under the base's own name, so the same Dockerfile builds here and elsewhere.
# The host's CA bundle (a TLS-intercepting proxy's CA may be only there) is handed to the build
# as a secret, never copied into the image.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: container/build-image.sh [COMMAND] [OPTIONS]

Commands:
  build [--tag T] [--base IMAGE] [--no-cache] [--refresh-base]
        [--file DOCKERFILE] [--context DIR] [--build-arg K=V]...
                     build container/Dockerfile from the repository root (default command);
                     --file/--context build another Dockerfile, e.g. a derived image
                     (Dockerfile.app-migrations) FROM an image already built here
  base [--base IMAGE] [--refresh-base]
                     only make sure the base image exists (pull, else debootstrap)
  run [--read-only] [-v SRC:DST[:ro]]... [-e K=V]... IMAGE -- CMD [ARGS...]
                     run CMD in a fresh container of IMAGE as uid/gid 1001 on the host
                     network. --read-only: read-only root, tmpfs /tmp, no capabilities,
                     no_new_privs: the Kubernetes securityContext of k8s/, enforced for real
  size [--tag T]     print the image size: uncompressed, and compressed as pushed
  buildah ARGS...    run buildah with this script's storage (e.g. `buildah images`)

Defaults: --tag localhost/migrunner:dev, --base docker.io/library/debian:bookworm-slim.
Environment: MIGRUNNER_IMAGE_CACHE (cache dir, default ~/.cache/migrunner-image; holds the
debootstrapped base tarball and buildah's storage), MIGRUNNER_DEBIAN_MIRROR,
MIGRUNNER_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt), MIGRUNNER_STORAGE_DRIVER
(auto|overlay|vfs; auto = overlay if the kernel mounts it), MIGRUNNER_BUILD_LAYERS (auto|0|1).
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cache=${MIGRUNNER_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/migrunner-image}
runroot=${MIGRUNNER_IMAGE_RUNROOT:-${XDG_RUNTIME_DIR:-/tmp}/migrunner-buildah-$(id -u)}
mirror=${MIGRUNNER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${MIGRUNNER_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

# overlay when the kernel lets us mount it (fast: layers are shared, not copied), else vfs
# (works anywhere, but every layer and every container is a full copy of the root filesystem).
# Each driver gets its own storage root: one root cannot switch drivers.
storage_driver() {
  local want=${MIGRUNNER_STORAGE_DRIVER:-auto} probe ok=1
  if [[ $want != auto ]]; then
    echo "$want"
    return
  fi
  probe=$(mktemp -d)
  mkdir "$probe/l" "$probe/u" "$probe/w" "$probe/m"
  if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" \
    "$probe/m" 2>/dev/null; then
    umount "$probe/m"
  else
    ok=0
  fi
  rm -rf "$probe"
  if ((ok)); then echo overlay; else echo vfs; fi
}
driver=$(storage_driver)
bh=(buildah --root "$cache/storage-$driver" --runroot "$runroot-$driver" --storage-driver "$driver")

tag=localhost/migrunner:dev
base=docker.io/library/debian:bookworm-slim
no_cache=()
refresh_base=0
dockerfile=
context=
build_args=()

log() { printf 'build-image: %s\n' "$*" >&2; }
die() {
  printf 'build-image: error: %s\n' "$*" >&2
  exit 2
}

image_exists() { "${bh[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# Make a Debian bookworm minbase tree, slimmed like the official -slim images, as a tarball.
debootstrap_tarball() {
  local tarball=$1 tree
  command -v debootstrap >/dev/null || die "debootstrap missing: run container/ci-deps.sh"
  tree=$(mktemp -d "$cache/rootfs.XXXXXX")
  log "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$tree" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $cache/debootstrap.log"
  cat >"$tree/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
  rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/* \
    "$tree"/usr/share/doc/* "$tree"/usr/share/man/* "$tree"/usr/share/info/* \
    "$tree"/usr/share/locale/* "$tree"/var/log/* "$tree"/tmp/*
  tar -C "$tree" --numeric-owner -cf "$tarball.part" .
  mv "$tarball.part" "$tarball"
  rm -rf "$tree"
}

ensure_base() {
  if ((refresh_base)); then
    "${bh[@]}" rmi -f "$base" >/dev/null 2>&1 || true
    rm -f "$cache/debian-bookworm-minbase.tar"
  fi
  image_exists "$base" && return 0
  if timeout 120 "${bh[@]}" pull -q "$base" >/dev/null 2>&1; then
    log "pulled $base"
    return 0
  fi
  case $base in
    docker.io/library/debian:bookworm* | debian:bookworm*) ;;
    *) die "cannot pull $base and only Debian bookworm bases can be made locally" ;;
  esac
  local tarball=$cache/debian-bookworm-minbase.tar ctr mnt
  [[ -s $tarball ]] || debootstrap_tarball "$tarball"
  log "committing $tarball as $base"
  ctr=$("${bh[@]}" from scratch)
  mnt=$("${bh[@]}" mount "$ctr")
  tar -C "$mnt" --numeric-owner -xpf "$tarball"
  "${bh[@]}" umount "$ctr" >/dev/null
  "${bh[@]}" config --os linux --arch amd64 --cmd bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  "${bh[@]}" commit -q --rm "$ctr" "$base" >/dev/null
}

build() {
  mkdir -p "$cache"
  [[ -n $dockerfile ]] || ensure_base
  local secret=() revision created source
  [[ -s $ca_bundle ]] && secret=(--secret "id=cacert,src=$ca_bundle")
  revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
  source=$(git -C "$root" remote get-url origin 2>/dev/null || true)
  created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  log "building $tag from $base"
  local file=${dockerfile:-$here/Dockerfile} ctx=${context:-$root} extra=()
  if [[ -z $dockerfile ]]; then
    extra=(--ignorefile "$here/Dockerfile.dockerignore"
      --build-arg "BASE_IMAGE=$base" --build-arg "REVISION=$revision"
      --build-arg "CREATED=$created" --build-arg "SOURCE=$source")
  fi
  local arg layers=false
  for arg in "${build_args[@]}"; do extra+=(--build-arg "$arg"); done
  case ${MIGRUNNER_BUILD_LAYERS:-auto} in
    1 | true) layers=true ;;
    auto) [[ $driver == overlay ]] && layers=true ;;
  esac
  # Layer caching: on with overlay (cheap), off with vfs, where every cached step is a full
  # copy of the root filesystem (a cold build took 2x longer). MIGRUNNER_BUILD_LAYERS=0|1.
  # --pull=never: FROM images come from this storage (the debootstrapped base, or images
  # built here), never from a registry this machine cannot reach.
  "${bh[@]}" build --isolation chroot --network host --pull=never \
    "--layers=$layers" "${no_cache[@]}" "${secret[@]}" "${extra[@]}" \
    -f "$file" -t "$tag" "$ctx" >&2
  # Each rebuild leaves the previous image's layers behind (vfs: full copies). Dangling images
  # are also the layer cache, so with overlay they are kept until the storage passes 4 GB.
  local used
  used=$(du -sm "$cache/storage-$driver" 2>/dev/null | cut -f1)
  if [[ $driver == vfs ]] || ((${used:-0} > 4096)); then
    "${bh[@]}" rmi --prune >/dev/null 2>&1 || true
  fi
  log "built $tag"
}

run() {
  local read_only=0 volumes=() envs=() image ctr status=0
  while (($#)); do
    case $1 in
      --read-only) read_only=1 ;;
      -v | --volume) volumes+=("$2") && shift ;;
      -e | --env) envs+=("$2") && shift ;;
      --) die "run: IMAGE must come before --" ;;
      -*) die "run: unknown option $1" ;;
      *) break ;;
    esac
    shift
  done
  if (($# < 3)) || [[ $2 != -- ]]; then
    die "run: usage: run [OPTIONS] IMAGE -- CMD [ARGS...]"
  fi
  image=$1
  shift 2
  ctr=$("${bh[@]}" from --pull-never -q "$image")
  if ((read_only)); then
    run_restricted "$ctr" "$@" || status=$?
  else
    local args=(--isolation chroot --network host --user 1001:1001)
    local v e
    for v in "${volumes[@]}"; do args+=(-v "$v"); done
    for e in "${envs[@]}"; do args+=(-e "$e"); done
    "${bh[@]}" run "${args[@]}" "$ctr" -- "$@" || status=$?
  fi
  "${bh[@]}" rm "$ctr" >/dev/null
  return "$status"
}

# What a Pod with readOnlyRootFilesystem, drop ALL, allowPrivilegeEscalation: false and
# runAsUser 1001 gets: a private mount namespace whose root is the image, read-only, with a
# tmpfs /tmp (the emptyDir) and the requested volumes; then chroot and drop every privilege.
# The environment is the image's ENV (container/Dockerfile), restated here.
run_restricted() {
  local ctr=$1 mnt v src dst
  shift
  [[ $(id -u) -eq 0 ]] || die "run --read-only needs root (mount namespace)"
  mnt=$("${bh[@]}" mount "$ctr")
  # shellcheck disable=SC2016 # expanded by the inner sh, not here
  local script='set -e; m=$1; shift
mount --make-rprivate /
mount --bind "$m" "$m"
mount -t tmpfs -o mode=1777,size=64m tmpfs "$m/tmp"
mount -t tmpfs -o mode=755,size=1m tmpfs "$m/dev"
for d in null zero random urandom; do : >"$m/dev/$d"; mount --bind "/dev/$d" "$m/dev/$d"; done
mount -t proc proc "$m/proc"
while [ "$1" != "--" ]; do
  src=${1%%:*}; rest=${1#*:}; dst=${rest%%:*}; opt=${rest#"$dst"}
  mkdir -p "$m$dst" 2>/dev/null || true
  mount --bind "$src" "$m$dst"
  [ "$opt" = ":ro" ] && mount -o remount,bind,ro "$m$dst"
  shift
done
shift
mount -o remount,bind,ro "$m"
exec chroot "$m" /usr/bin/env -i PATH="$PATH_IN" HOME=/tmp TMPDIR=/tmp \
  PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MIGRUNNER_SNAPSHOT_DIR=/opt/migrunner/snapshots "$@"'
  local vols=()
  for v in "${volumes[@]}"; do
    src=${v%%:*}
    dst=${v#*:}
    dst=${dst%%:*}
    [[ -e $src ]] || die "volume source $src missing"
    # Mount points must exist before the root becomes read-only.
    mkdir -p "$mnt$dst"
    vols+=("$v")
  done
  local status=0
  PATH_IN=/opt/migrunner/bin:/usr/local/bin:/usr/bin:/bin \
    unshare --mount --pid --fork sh -c "$script" sh "$mnt" "${vols[@]}" -- \
    "${envs[@]}" setpriv --reuid=1001 --regid=1001 --clear-groups --no-new-privs \
    --inh-caps=-all --bounding-set=-all -- "$@" || status=$?
  "${bh[@]}" umount "$ctr" >/dev/null
  return "$status"
}

size() {
  local id ctr mnt bytes tmp compressed
  id=$("${bh[@]}" inspect --type image --format '{{.FromImageID}}' "$tag")
  ctr=$("${bh[@]}" from --pull-never -q "$tag")
  mnt=$("${bh[@]}" mount "$ctr")
  bytes=$(du -sb "$mnt" | cut -f1)
  "${bh[@]}" umount "$ctr" >/dev/null
  "${bh[@]}" rm "$ctr" >/dev/null
  tmp=$(mktemp -d)
  "${bh[@]}" push -q --compression-format gzip "$tag" "oci:$tmp/img" >/dev/null
  compressed=$(du -sb "$tmp/img/blobs" | cut -f1)
  rm -rf "$tmp"
  printf 'image %s (%s)\nuncompressed: %d MB\ncompressed (as pushed): %d MB\n' \
    "$tag" "${id:0:12}" $((bytes / 1000000)) $((compressed / 1000000))
}

command=build
if (($#)) && [[ $1 != -* ]]; then
  command=$1
  shift
fi
case $command in
  -h | --help | help)
    usage
    exit 0
    ;;
  buildah) exec "${bh[@]}" "$@" ;;
  run)
    volumes=()
    envs=()
    run "$@"
    exit
    ;;
esac

while (($#)); do
  case $1 in
    --tag) tag=${2:?--tag needs a value} && shift ;;
    --base) base=${2:?--base needs a value} && shift ;;
    --no-cache) no_cache=(--no-cache) ;;
    --refresh-base) refresh_base=1 ;;
    --file) dockerfile=${2:?--file needs a value} && shift ;;
    --context) context=${2:?--context needs a value} && shift ;;
    --build-arg) build_args+=("${2:?--build-arg needs a value}") && shift ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

case $command in
  build) build ;;
  base) mkdir -p "$cache" && ensure_base ;;
  size) size ;;
  *) die "unknown command $command (see --help)" ;;
esac
