#!/usr/bin/env bash
# Build the daemon image (boxruntime/daemon:latest) without any container registry.
#
#   deploy/build-daemon-image.sh [--force] [--wheelhouse DIR]
#
# 1. copies the package sources of this checkout into a temporary build context;
# 2. builds the boxruntime wheel, and fetches wheels of its dependencies for the sandbox
#    image's Python and platform (from PyPI, or fully offline from --wheelhouse DIR);
# 3. `docker build --network none` FROM the local sandbox image (deploy/Dockerfile).
#
# Idempotent: the image carries a digest of its inputs (sources, Dockerfile, this script,
# the sandbox image, the pinned dependency versions) and is rebuilt only when one changes.
#
# Environment: BOXRUNTIME_DAEMON_IMAGE (default boxruntime/daemon:latest),
# BOXRUNTIME_SANDBOX_IMAGE (default boxruntime/sandbox:latest), PYTHON (a Python with pip;
# default .venv/bin/python of this checkout, else python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
IMAGE=${BOXRUNTIME_DAEMON_IMAGE:-boxruntime/daemon:latest}
SANDBOX_IMAGE=${BOXRUNTIME_SANDBOX_IMAGE:-boxruntime/sandbox:latest}
DIGEST_LABEL=org.boxruntime.inputs-digest
# Every package of the wheel: the console command (boxruntime_cli) composes the daemon's commands
# and the client commands (boxruntime exec, sessions), which use the bridge.
SOURCES=(pyproject.toml README.md boxruntime langbot_bridge boxruntime_cli)

say() { printf '\033[1m[build-daemon-image]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[build-daemon-image]\033[0m %s\n' "$*" >&2; exit 1; }
fail() { tail -n 40 "$2" >&2; die "$1 (last lines of its output above)"; }

force=0
wheelhouse=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --wheelhouse)
      [ $# -ge 2 ] || die "--wheelhouse needs a directory"
      wheelhouse=$(cd "$2" && pwd) || die "no such wheelhouse directory: $2"
      shift
      ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done

if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
  py=$ROOT/.venv/bin/python
else
  py=python3
fi
"$py" -m pip --version >/dev/null 2>&1 || die "$py has no pip: run ./dev setup, or set PYTHON to a Python with pip"

docker info >/dev/null 2>&1 || die "Docker engine not reachable — start it first (./dev test starts it)"
sandbox_id=$(docker image inspect --format '{{.Id}}' "$SANDBOX_IMAGE" 2>/dev/null) \
  || die "base image $SANDBOX_IMAGE is missing: run boxruntime image build first (sudo .venv/bin/boxruntime image build)"

# Dependency versions: those of the Python that runs the tests, when it has boxruntime
# installed, so the image runs what was tested; otherwise whatever the resolver picks today.
constraints=""
if "$py" -c 'import boxruntime' >/dev/null 2>&1; then
  constraints=$("$py" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null | grep -v ' @ ' || true)
fi

cd "$ROOT"
for src in "${SOURCES[@]}"; do [ -e "$src" ] || die "$ROOT/$src is missing: run this from a boxruntime checkout"; done
digest=$(
  {
    echo "$sandbox_id"
    printf '%s\n' "$constraints"
    sha256sum deploy/Dockerfile deploy/build-daemon-image.sh
    find "${SOURCES[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-32
)
current=$(docker image inspect --format "{{ index .Config.Labels \"$DIGEST_LABEL\" }}" "$IMAGE" 2>/dev/null || true)
if [ "$force" = 0 ] && [ "$current" = "$digest" ]; then
  say "$IMAGE is up to date (inputs $digest); --force rebuilds"
  exit 0
fi
previous=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)

work=$(mktemp -d "${TMPDIR:-/tmp}/boxruntime-daemon-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
ctx=$work/context
mkdir -p "$ctx/src" "$ctx/wheels"
tar -c --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' "${SOURCES[@]}" | tar -x -C "$ctx/src"
cp deploy/Dockerfile "$ctx/Dockerfile"
pin=()
if [ -n "$constraints" ]; then
  printf '%s\n' "$constraints" >"$ctx/constraints.txt"
  pin=(--constraint "$ctx/constraints.txt")
fi

# The wheels must fit the image's interpreter, not necessarily the one running this script.
read -r pyver machine glibc < <(
  docker run --rm --network none --entrypoint python3 "$SANDBOX_IMAGE" -c \
    'import platform, sys; print("%d.%d" % sys.version_info[:2], platform.machine(), platform.libc_ver()[1])'
) || die "could not run python3 in $SANDBOX_IMAGE"
[ -n "$glibc" ] || die "$SANDBOX_IMAGE has no glibc; only glibc-based sandbox images are supported"
platforms=()
for ((minor = ${glibc#*.}; minor >= 17; minor--)); do platforms+=(--platform "manylinux_2_${minor}_${machine}"); done
platforms+=(--platform "manylinux2014_${machine}")
say "target: CPython $pyver, $machine, glibc $glibc"

pip_quiet=(--disable-pip-version-check)
index=()
[ -n "$wheelhouse" ] && index=(--no-index --find-links "$wheelhouse")
say "building the boxruntime wheel"
"$py" -m pip wheel "${pip_quiet[@]}" "${index[@]}" --no-deps --wheel-dir "$ctx/wheels" "$ctx/src" \
  >"$work/pip.log" 2>&1 || fail "pip wheel of the sources failed" "$work/pip.log"
rm -rf "$ctx/src"
say "collecting dependency wheels${wheelhouse:+ from $wheelhouse}"
"$py" -m pip download "${pip_quiet[@]}" "${index[@]}" --dest "$ctx/wheels" --only-binary=:all: \
  --implementation cp --python-version "$pyver" "${platforms[@]}" \
  "${pin[@]}" \
  "$ctx"/wheels/boxruntime-*.whl pip >"$work/pip.log" 2>&1 \
  || fail "pip download of the dependencies failed (no PyPI? pass --wheelhouse DIR with the wheels)" "$work/pip.log"
rm -f "$ctx/constraints.txt"
say "wheelhouse: $(find "$ctx/wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$ctx/wheels" | cut -f1)"

say "docker build $IMAGE (no network, FROM $SANDBOX_IMAGE)"
# The classic builder resolves FROM in the local image store and never asks a registry;
# BuildKit with a docker-container driver would not see local images.
build() {
  DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --network none --force-rm \
    --build-arg "SANDBOX_IMAGE=$SANDBOX_IMAGE" "$@" "$ctx" >>"$work/build.log" 2>&1 \
    || fail "docker build failed" "$work/build.log"
}
# The build stage gets a tag of its own first, so that it can be removed by name afterwards;
# otherwise every rebuild would leave it behind as an untagged image. The second build reuses it.
stage=boxruntime/daemon-build:$$
trap 'docker image rm "$stage" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
build --target build --tag "$stage"
build --label "$DIGEST_LABEL=$digest" --tag "$IMAGE"

now=$(docker image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$now" ]; then
  # The image this script built before, now untagged; kept if a container still uses it.
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
say "built $IMAGE ($now, inputs $digest)"
