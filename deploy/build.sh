#!/bin/bash
# Build the wheels the platform's image installs, on this host (which reaches PyPI through its own
# CA store; the image build then needs no network and no certificates), then the image.
#
#   deploy/build.sh                the wheels, then the image flespi/platform:latest (IMAGE=name:tag)
#   deploy/build.sh --wheels-only  the wheels only: deploy/build/wheels, the platform's own in
#                                  deploy/build/platform (both git-ignored)
#   deploy/build.sh --image-only   the image only, from the wheels built before
#
# The work tree is copied to deploy/build/src first (without .git, .venv, var/, test output), so
# that the build leaves nothing in the checkout; the admin's browser code (Leaflet, uPlot) is
# fetched there by devtools.vendor when missing. PYTHON names the interpreter that resolves the
# wheels (default: the first of /usr/bin/python3.11, /usr/bin/python3, .venv/bin/python of exactly
# the version of the image's Python, 3.11.2 on bookworm). Needs flespi/base:bookworm.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
BUILD="$HERE/build"
WHEELS="$BUILD/wheels"
PLATFORM="$BUILD/platform"
SRC="$BUILD/src"
IMAGE=${IMAGE:-flespi/platform:latest}
CACHE=flespi/platform-build:cache

START=$SECONDS
say() { printf '[build %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "error: $*" >&2; exit 1; }
trap 'say "error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

image=1 wheels=1
for arg in "$@"; do
    case "$arg" in
        --wheels-only) image=0 ;;
        --image-only) wheels=0 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg (usage: deploy/build.sh [--wheels-only | --image-only])" ;;
    esac
done

if [ "$wheels" = 1 ]; then
    # pip evaluates environment markers (python_full_version < "3.11.3") with the interpreter it runs
    # on, so the wheels are resolved by a Python of exactly the image's version: Debian's own, on a
    # bookworm host. The resolving happens in a venv of it under deploy/build/venv.
    target=$(docker run --rm --network none flespi/base:bookworm python3 -c 'import platform; print(platform.python_version())' \
                 2>/dev/null || true)
    [ -n "$target" ] || die "no flespi/base:bookworm image to read its Python version from: build it first (deploy/base-image.sh base)"
    version_of() { "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || true; }
    if [ -z "${PYTHON:-}" ]; then
        for candidate in /usr/bin/python3.11 /usr/bin/python3 "$REPO/.venv/bin/python" python3.11; do
            if [ "$(version_of "$candidate")" = "$target" ]; then PYTHON=$candidate; break; fi
        done
        [ -n "${PYTHON:-}" ] || die "no Python $target on this host, the image's version (pip resolves markers \
such as python_full_version < \"3.11.3\" with the Python it runs on): install Debian bookworm's python3 and \
python3-venv, or name one: PYTHON=/path/to/python$target deploy/build.sh"
    fi
    version=$(version_of "$PYTHON")
    [ "$version" = "$target" ] ||
        die "PYTHON=$PYTHON is Python ${version:-that does not run}; the image has Python $target: build its wheels with that"
    if [ "$(version_of "$BUILD/venv/bin/python")" != "$target" ]; then
        rm -rf "$BUILD/venv"
        "$PYTHON" -m venv "$BUILD/venv" || die "$PYTHON -m venv failed (Debian: apt-get install python3-venv)"
    fi
    PIP=("$BUILD/venv/bin/python" -m pip)

    began=$SECONDS
    say "copying the work tree to ${SRC#"$REPO"/}"
    mkdir -p "$SRC" "$WHEELS" "$PLATFORM"
    # P: keep the admin's vendored browser code fetched into the copy by an earlier build
    rsync -a --delete --delete-excluded \
        --filter='P /accounts/static/regional_admin/vendor/' \
        --exclude=/.git --exclude=/.venv --exclude=/var/ --exclude=/data/ --exclude=/test-output/ \
        --exclude=/deploy/build/ --exclude=/build/ --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.mypy_cache --exclude=.hypothesis \
        "$REPO/" "$SRC/"
    if [ -d "$REPO/accounts/static/regional_admin/vendor" ]; then
        rsync -a "$REPO/accounts/static/regional_admin/vendor/" "$SRC/accounts/static/regional_admin/vendor/"
    fi
    (cd "$SRC" && "$BUILD/venv/bin/python" -m devtools.vendor) | sed 's/^/  /'
    say "source ready in $((SECONDS - began)) s"

    began=$SECONDS
    say "pip wheel: the platform and its dependencies into ${WHEELS#"$REPO"/}"
    rm -f "$WHEELS"/*.whl
    # pip's cache makes a second build quick: the dependencies are pinned, only the platform is built
    if ! "${PIP[@]}" wheel --disable-pip-version-check --progress-bar off --wheel-dir "$WHEELS" "$SRC" \
            >"$BUILD/pip-wheel.log" 2>&1; then
        tail -n 30 "$BUILD/pip-wheel.log" >&2
        die "pip wheel failed (the whole log: $BUILD/pip-wheel.log)"
    fi
    rm -rf "$SRC/build" "$SRC"/*.egg-info
    count=$(find "$WHEELS" -name '*.whl' | wc -l)
    sdists=$(grep -c '^  Created wheel for' "$BUILD/pip-wheel.log" || true)
    say "$count wheels ($(du -sh "$WHEELS" | cut -f1), $sdists built from source) in $((SECONDS - began)) s"
    platform=$(ls "$WHEELS"/flespi_site-*.whl 2>/dev/null | head -n 1)
    [ -n "$platform" ] || die "pip wheel made no flespi_site wheel (see $BUILD/pip-wheel.log)"
    # apart from its dependencies: the image installs those in a layer that stays cached
    mkdir -p "$PLATFORM" && rm -f "$PLATFORM"/*.whl && mv "$platform" "$PLATFORM/"
    platform="$PLATFORM/${platform##*/}"
    "$BUILD/venv/bin/python" - "$platform" <<'EOF' || die "the platform's wheel lacks files the image needs (above)"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
needed = {
    "the console script flespi": any(n.endswith("entry_points.txt") for n in names)
        and any("flespi = flespi_site.cli:main" in zipfile.ZipFile(sys.argv[1]).read(n).decode()
                for n in names if n.endswith("entry_points.txt")),
    "templates": any("/templates/" in n for n in names),
    "migrations": any("/migrations/0001" in n for n in names),
    "the admin's vendored browser code": any("regional_admin/vendor/" in n for n in names),
}
missing = [what for what, present in needed.items() if not present]
for what in missing:
    print(f"  missing in {sys.argv[1].rsplit('/', 1)[-1]}: {what}", file=sys.stderr)
sys.exit(1 if missing else 0)
EOF
fi

if [ "$image" = 1 ]; then
    docker image inspect flespi/base:bookworm >/dev/null 2>&1 ||
        die "no flespi/base:bookworm image: build it first with deploy/base-image.sh base"
    ls "$PLATFORM"/flespi_site-*.whl >/dev/null 2>&1 || die "no wheels in $PLATFORM: run deploy/build.sh first"
    began=$SECONDS
    say "docker build -t $IMAGE (no network)"
    # The legacy builder (docker-compose 1.29 uses it too; BuildKit is not installed here). The
    # platform stage is tagged ($CACHE) so that it and the dependencies' layer below it stay as
    # the next build's cache; the stages of earlier builds, untagged, are removed.
    if ! { DOCKER_BUILDKIT=0 docker build --network none --force-rm --target platform -t "$CACHE" "$REPO" &&
           DOCKER_BUILDKIT=0 docker build --network none --force-rm -t "$IMAGE" "$REPO"; } >"$BUILD/docker-build.log" 2>&1; then
        tail -n 30 "$BUILD/docker-build.log" >&2
        die "docker build failed (the whole log: $BUILD/docker-build.log)"
    fi
    # what earlier builds left untagged: their stages, and the image that was $IMAGE before (tag a
    # release, IMAGE=flespi/platform:<version>, to keep it for a rollback)
    docker image prune --force --filter label=org.flespi.recipe >/dev/null
    cached=$(grep -c 'Using cache' "$BUILD/docker-build.log" || true)
    size=$(docker image inspect --format '{{ .Size }}' "$IMAGE")
    say "image $IMAGE: $((size / 1000000)) MB, built in $((SECONDS - began)) s ($cached steps from the cache)"
fi
say "done in $((SECONDS - START)) s"
