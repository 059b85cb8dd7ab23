#!/bin/bash
# Build the container base images from Debian packages, with no image registry: debootstrap a
# minimal bookworm with the packages each image needs, bring it up to date from bookworm-updates
# and bookworm-security, trim it, and `docker import` it.
#
#   flespi/base:bookworm      Python 3.11 (python3, python3-venv), tini, CA certificates, tzdata,
#                             libstdc++ (what the manylinux wheels of numpy, psycopg-binary, orjson...
#                             do not bundle); the Dockerfile at the repository root builds on it
#   flespi/services:bookworm  PostgreSQL 15, Redis, tini, and deploy/services/entrypoint.sh as
#                             /usr/local/bin/flespi-services (the MQTT brokers are the platform's own role)
#
# Usage: deploy/base-image.sh [--rebuild] [base|services ...]   (both by default; needs root)
#
# An image is skipped when it exists and was built from the same recipe (its package list, this
# script and the entrypoint: label org.flespi.recipe); --rebuild builds it again regardless.
# MIRROR (http://deb.debian.org/debian) and SECURITY_MIRROR (http://deb.debian.org/debian-security)
# name the Debian mirrors; plain http is enough, apt checks the signatures. The debootstrap log of
# each image is kept in deploy/build/logs/. Unpacking and configuring the packages takes most of
# the time, not fetching them: a cache of the .deb files (--cache-dir) saved nothing here.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
LOGS="$HERE/build/logs"

BASE_IMAGE=flespi/base:$SUITE
BASE_PACKAGES="python3 python3-venv ca-certificates tini tzdata libstdc++6"
SERVICES_IMAGE=flespi/services:$SUITE
SERVICES_PACKAGES="postgresql redis-server tini tzdata ca-certificates"

START=$SECONDS
say() { printf '[base-image %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "error: $*" >&2; exit 1; }

rebuild=0
wanted=()
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        base|services) wanted+=("$arg") ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg (usage: deploy/base-image.sh [--rebuild] [base|services ...])" ;;
    esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(base services)

docker info >/dev/null 2>&1 || die "docker does not answer (is dockerd running? docker info says why)"
can_build() {
    [ "$(id -u)" = 0 ] || die "debootstrap needs root: run it as root (sudo deploy/base-image.sh)"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
}

ROOTFS=""
cleanup() {  # what a build leaves: mounts in the chroot (ours, or debootstrap's if it was cut short), the tree
    local mount
    if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then
        for mount in $(awk -v root="$ROOTFS/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r); do
            umount -l "$mount" || true
        done
        rm -rf --one-file-system "$ROOTFS"
    fi
    ROOTFS=""
}
trap cleanup EXIT
trap 'say "error: line $LINENO: $BASH_COMMAND failed" >&2' ERR
trap 'exit 130' INT TERM

recipe_of() {  # what an image is built from (comments aside): a change of it builds the image again
    local name=$1 packages=$2 extra=${3:-}
    {
        echo "$name $SUITE $packages"
        grep -v -E '^[[:space:]]*#' "$0"
        if [ -n "$extra" ]; then cat "$extra"; fi
    } | sha256sum | cut -c1-16
}

# Lines of debootstrap and apt, shortened: one line per stage, and a count for the per-package ones.
progress() {
    local log=$1
    awk -v logfile="$log" '
        { print >> logfile; fflush(logfile) }
        /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [a-z0-9]/ {
            verb = $2; name = $3; sub(/\.+$/, "", name); count[verb]++
            if (count[verb] % 40 == 1) printf "  %s %s... (%d)\n", verb, name, count[verb]
            next
        }
        /^I: / { sub(/^I: /, ""); print "  " $0; next }
        /^(W|E): / { print "  " $0 }
        /^(Get|Setting up|Unpacking)/ { n++; if (n % 20 == 1) printf "  apt: %s\n", $0 }
    '
}

build_image() {
    local kind=$1 name packages extra changes recipe existing log size
    changes=(--change 'ENV LANG=C.UTF-8' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
    case "$kind" in
        base)
            name=$BASE_IMAGE packages=$BASE_PACKAGES extra=""
            changes+=(--change 'CMD ["python3"]')
            ;;
        services)
            name=$SERVICES_IMAGE packages=$SERVICES_PACKAGES extra="$HERE/services/entrypoint.sh"
            changes+=(--change 'ENTRYPOINT ["tini", "--", "flespi-services"]' --change 'VOLUME /data')
            ;;
    esac
    recipe=$(recipe_of "$name" "$packages" "$extra")
    existing=$(docker image inspect --format '{{ index .Config.Labels "org.flespi.recipe" }}' "$name" 2>/dev/null || true)
    if [ "$rebuild" = 0 ] && [ -n "$existing" ]; then
        if [ "$existing" = "$recipe" ]; then
            say "$name exists (recipe $recipe): skipped (--rebuild to build it again)"
            return
        fi
        say "$name exists but from another recipe ($existing, now $recipe): building it again"
    fi
    changes+=(--change "LABEL org.flespi.recipe=$recipe org.flespi.suite=$SUITE")
    can_build

    mkdir -p "$LOGS"
    log="$LOGS/base-image-$kind.log"
    : >"$log"
    ROOTFS=$(mktemp -d /var/tmp/flespi-base-image.XXXXXX)
    local root="$ROOTFS/rootfs"
    say "$name: debootstrap --variant=minbase $SUITE from $MIRROR with: $packages (log: ${log#"$PWD"/})"
    local began=$SECONDS
    if ! debootstrap --variant=minbase --include="${packages// /,}" "$SUITE" "$root" "$MIRROR" 2>&1 | progress "$log"; then
        tail -n 30 "$log" >&2
        die "debootstrap failed for $name (the whole log: $log)"
    fi
    say "$name: base system in $((SECONDS - began)) s"

    began=$SECONDS
    say "$name: updates from $SUITE-updates and $SUITE-security"
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    mount -t proc proc "$root/proc"
    # no service starts inside the chroot
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
    if ! { chroot "$root" apt-get update -q &&
           DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get -y -q -o Dpkg::Use-Pty=0 \
               -o Dpkg::Options::=--force-confold dist-upgrade; } \
           2>&1 | progress "$log"; then
        tail -n 30 "$log" >&2
        die "apt-get in the chroot failed for $name (the whole log: $log)"
    fi
    say "$name: up to date in $((SECONDS - began)) s"

    if [ "$kind" = services ]; then
        install -m 0755 "$HERE/services/entrypoint.sh" "$root/usr/local/bin/flespi-services"
        # the cluster the package made at install is not used: flespi-services makes one in /data
        rm -rf "$root/var/lib/postgresql/"*/main "$root/etc/postgresql/"*/main
        # PostgreSQL's JIT (LLVM, 155 MB of the image): without its provider the server runs with
        # jit off, which OLTP queries like the platform's do not miss
        rm -rf "$root/usr/lib/postgresql/"*/lib/llvmjit* "$root/usr/lib/postgresql/"*/lib/bitcode \
               "$root/usr/lib/x86_64-linux-gnu/libLLVM-"*.so* "$root/usr/lib/x86_64-linux-gnu/libz3.so"*
        mkdir -p "$root/data"
    fi

    # Trim what a container never uses, and keep later apt-get installs trimmed the same way.
    umount "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
    chroot "$root" apt-get clean
    cat >"$root/etc/dpkg/dpkg.cfg.d/01-container-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/var/lib/apt/lists/"* \
           "$root/var/cache/apt/"*.bin "$root/var/cache/debconf/"*-old "$root/var/log/"*.log \
           "$root/var/log/apt/"* "$root/tmp/"* "$root/root/.cache"
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    : >"$root/etc/resolv.conf"
    rm -f "$root/etc/hostname"
    echo "$name" >"$root/etc/flespi-image"

    began=$SECONDS
    say "$name: docker import"
    tar --numeric-owner --xattrs -C "$root" -c . |
        docker import "${changes[@]}" --message "debootstrap $SUITE: $packages" - "$name" >/dev/null
    # the image this one replaces, now untagged (unless a container still uses it)
    docker image prune --force --filter label=org.flespi.recipe >/dev/null
    size=$(docker image inspect --format '{{ .Size }}' "$name")
    say "$name: imported in $((SECONDS - began)) s, $((size / 1000000)) MB"
    cleanup
}

for kind in "${wanted[@]}"; do
    build_image "$kind"
done
say "done in $((SECONDS - START)) s"
