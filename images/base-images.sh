#!/usr/bin/env bash
# `make base-images`: where no registry answers, build local stand-ins for the base images the Dockerfiles
# name (python:3.11-slim, busybox:1.37), from Debian packages, under those same names. `make image` then
# builds with --pull=never. Where Docker Hub answers this does nothing: the real images win (FORCE=1 builds
# the stand-ins anyway). Needs root, debootstrap and apt-get (a Debian host). See docs/images.md.
#
# Every stand-in carries the label io.inpaint.stand-in, and the images built on it inherit the label, so
# an image built here says so (podman image inspect --format '{{index .Labels "io.inpaint.stand-in"}}').
set -euo pipefail
cd "$(dirname "$0")/.."
source images/lib.sh

SUITE=bookworm                      # Debian 12: Python 3.11, as python:3.11-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
engine=$(pick_engine)

if [ -z "${FORCE:-}" ] && registry_answers; then
    note "$(registry_name) answers: the builds pull the real base images, no stand-ins needed (FORCE=1 builds them anyway)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "building stand-ins needs root (debootstrap, chroot): run it as root or with sudo"

work=$(mktemp -d /var/tmp/inpaint-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Import a root file system (folder $1) as image $2, with Dockerfile instructions as --change options.
import_root() {
    local root=$1 name=$2; shift 2
    local changes=() change
    for change in "$@" "LABEL $STAND_IN_LABEL=debian-$SUITE"; do changes+=(--change "$change"); done
    if [ "$engine" = podman ]; then name=$(qualified "$name"); fi
    tar --numeric-owner -C "$root" -c . | "$engine" import "${changes[@]}" - "$name" >"$work/import.log" 2>&1 \
        || { cat "$work/import.log" >&2; die "$engine import of $name failed (output above)"; }
}

# python:X.Y-slim: Debian's python3, pip and CA certificates on a minbase bookworm.
python_stand_in() {
    local name=$1 version=${1#python:}; version=${version%-slim}
    local debian_version=3.11
    [ "$version" = "$debian_version" ] || die "$name: Debian $SUITE has Python $debian_version, not $version; build with PYTHON_VERSION=$debian_version (--build-arg) or where a registry answers"
    command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install debootstrap"
    local root=$work/python
    debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
        "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above): check that $MIRROR answers, or set DEBIAN_MIRROR"; }
    # Like the official image: pip installs into the system (no PEP 668 marker), no apt lists or docs.
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
        "$root"/usr/share/info/* "$root"/var/log/*
    # Trust what this machine trusts: a TLS-intercepting egress proxy's CA must reach pip inside the build.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the stand-in"
    fi
    import_root "$root" "$name" \
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "ENV LANG=C.UTF-8" \
        "ENV PYTHON_VERSION=$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')" \
        'CMD ["python3"]'
}

# busybox:*: Debian's busybox-static, its applets linked in /bin, root and nobody in /etc/passwd.
busybox_stand_in() {
    local name=$1 root=$work/busybox
    command -v apt-get >/dev/null || die "$name: needs apt-get (a Debian host) to fetch busybox-static"
    (cd "$work" && apt-get download -o APT::Sandbox::User=root busybox-static >/dev/null) \
        || die "apt-get download busybox-static failed: run apt-get update first"
    dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
    mkdir -p "$root"/{bin,etc,tmp,root,home,var,dev,proc,sys}
    chmod 1777 "$root/tmp"
    cp "$work/deb/bin/busybox" "$root/bin/busybox"
    local applet
    for applet in $("$root/bin/busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"; done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
    import_root "$root" "$name" "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" 'CMD ["sh"]'
}

for image in $(base_images "${DOCKERFILES[@]}"); do
    if [ -z "${FORCE:-}" ] && image_exists "$engine" "$image"; then
        note "$image: already here"; continue
    fi
    start=$SECONDS
    case "$image" in
        python:*-slim) python_stand_in "$image" ;;
        busybox:*) busybox_stand_in "$image" ;;
        *) die "no stand-in recipe for $image: add one to images/base-images.sh, or build where a registry answers" ;;
    esac
    note "$image: stand-in built from Debian $SUITE packages in $((SECONDS - start)) s"
done
