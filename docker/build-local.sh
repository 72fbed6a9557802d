#!/usr/bin/env bash
# Builds the CPU serve image on a machine that cannot pull from an image registry.
#
#   docker/build-local.sh            # base image from Debian packages (once), then albedogan3d:serve-cpu and
#                                    # albedogan3d:lb (HAProxy, for docker/compose.replicas.yml)
#   docker/build-local.sh --base     # only the base image
#
# The base image (albedogan3d/base:bookworm) is Debian bookworm made with debootstrap from the apt mirror this
# machine already uses, with this machine's CA bundle inside so pip and npm can reach their registries through
# whatever TLS setup this host trusts. It is a local convenience: the GPU images never see that bundle.
# Environment: BASE_IMAGE (default albedogan3d/base:bookworm; set e.g. debian:bookworm-slim where a registry is
# reachable and nothing is debootstrapped), IMAGE (default albedogan3d:serve-cpu), LB_IMAGE (albedogan3d:lb), MIRROR (default: from
# /etc/apt/sources.list*), CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-albedogan3d/base:bookworm}
IMAGE=${IMAGE:-albedogan3d:serve-cpu}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
LOCAL_CA=/usr/local/share/ca-certificates/host-bundle.crt  # outside what Debian's ca-certificates rewrites

debian_mirror() {
    # The first URI of a bookworm (not -security/-updates) source, one-line or deb822 format.
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i ~ /^[a-z]+:\/\//) { u = $i; s = $(i + 1); break }
                          if (s == "bookworm") { print u; exit } }
            /^URIs:/    { u = $2 }
            /^Suites:/  { for (i = 2; i <= NF; i++) if ($i == "bookworm") { print u; exit } }
        ' "$f"
    done | head -n 1
}

build_base() {
    command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
    local mirror=${MIRROR:-$(debian_mirror)}
    mirror=${mirror:-http://deb.debian.org/debian}
    local dir
    dir=$(mktemp -d /tmp/albedogan-rootfs.XXXXXX)
    trap 'rm -rf "$dir"' EXIT
    echo "debootstrap bookworm from $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$dir" "$mirror" >/tmp/albedogan-debootstrap.log
    install -D -m 0644 "$CA_BUNDLE" "$dir$LOCAL_CA"
    chroot "$dir" update-ca-certificates >/dev/null 2>&1  # it warns that the bundle holds many certs: fine
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" >"$dir/etc/apt/sources.list"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/var/log/* "$dir"/tmp/*
    tar -C "$dir" -c . | docker import \
        --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV PIP_CERT=$LOCAL_CA" \
        --change "ENV NODE_EXTRA_CA_CERTS=$LOCAL_CA" \
        --change 'CMD ["bash"]' - "$BASE_IMAGE"
    rm -rf "$dir"
    trap - EXIT
}

if [ "$BASE_IMAGE" = albedogan3d/base:bookworm ] && ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    build_base
fi
[ "${1:-}" = "--base" ] && exit 0

size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
start=$(date +%s)
docker build --network host --target serve \
    --build-arg SERVE_BASE="$BASE_IMAGE" --build-arg VIEWER_BASE="$BASE_IMAGE" --build-arg ORT=cpu \
    -t "$IMAGE" .
echo "built $IMAGE in $(($(date +%s) - start)) s: $(size "$IMAGE")"
docker build --network host -f docker/lb.Dockerfile --build-arg LB_BASE="$BASE_IMAGE" -t "${LB_IMAGE:-albedogan3d:lb}" .
echo "built ${LB_IMAGE:-albedogan3d:lb}: $(size "${LB_IMAGE:-albedogan3d:lb}")"
