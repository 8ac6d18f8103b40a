#!/bin/sh
# Fetch the ONNX Runtime C/C++ API headers (headers only, nothing installed) from the
# Debian 13 "trixie" package libonnxruntime-dev, using the Debian mirror this machine's
# apt is already configured with (read from /etc/apt/sources.list.d/*.sources at run time).
#
#   fetch_ort_headers.sh DEST_DIR
#
# On success prints the include directory (the one holding onnxruntime_cxx_api.h) on the
# last line of stdout and exits 0. Any failure exits non-zero with a message on stderr.
# Override the suite/package with ONNXQ_ORT_SUITE / ONNXQ_ORT_PACKAGE.
set -eu

dest=${1:?usage: fetch_ort_headers.sh DEST_DIR}
suite=${ONNXQ_ORT_SUITE:-trixie}
pkg=${ONNXQ_ORT_PACKAGE:-libonnxruntime-dev}

find_header() {
    find "$1" -name onnxruntime_cxx_api.h -print 2>/dev/null | head -n 1
}

# Already fetched?
if [ -d "$dest/root" ]; then
    h=$(find_header "$dest/root")
    if [ -n "$h" ]; then dirname "$h"; exit 0; fi
fi

command -v apt-get >/dev/null 2>&1 || { echo "fetch_ort_headers: apt-get not found (not a Debian-like system)" >&2; exit 2; }
command -v dpkg >/dev/null 2>&1 || { echo "fetch_ort_headers: dpkg not found" >&2; exit 2; }

# The first Debian main-archive URI configured in deb822 sources (skip -security suites).
uri=""
keyring=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas are separated by blank lines; pick the first stanza whose Suites do
    # not end in -security and take its URIs and Signed-By.
    found=$(awk '
        BEGIN { RS=""; FS="\n" }
        {
            u=""; s=""; k=""
            for (i = 1; i <= NF; i++) {
                line = $i
                if (line ~ /^[ \t]*#/) continue
                if (line ~ /^URIs:/)      { sub(/^URIs:[ \t]*/, "", line); split(line, a, /[ \t]+/); u = a[1] }
                if (line ~ /^Suites:/)    { sub(/^Suites:[ \t]*/, "", line); s = line }
                if (line ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", line); k = line }
            }
            if (u != "" && s !~ /-security/ && u ~ /debian\/?$/) { print u "|" k; exit }
        }' "$f")
    if [ -n "$found" ]; then
        uri=${found%%|*}
        keyring=${found#*|}
        break
    fi
done
[ -n "$uri" ] || { echo "fetch_ort_headers: no Debian archive URI found in /etc/apt/sources.list.d/*.sources" >&2; exit 3; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/onnxq-ort-headers.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
chmod 755 "$tmp"  # apt drops privileges to _apt for downloads when run as root
mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$tmp/cache"

{
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: $suite"
    echo "Components: main"
    [ -n "$keyring" ] && echo "Signed-By: $keyring"
} > "$tmp/onnxq.sources"

aptopts="-o Dir::Etc::sourcelist=$tmp/onnxq.sources -o Dir::Etc::sourceparts=- \
 -o Dir::State::Lists=$tmp/lists -o Dir::Cache=$tmp/cache -o Dir::Cache::archives=$tmp/archives \
 -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0"

echo "fetch_ort_headers: apt-get update ($suite from $uri)" >&2
# shellcheck disable=SC2086
apt-get -q $aptopts update >&2
echo "fetch_ort_headers: apt-get download $pkg" >&2
# shellcheck disable=SC2086
(cd "$tmp" && apt-get -q $aptopts download "$pkg" >&2)

deb=$(ls "$tmp"/*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "fetch_ort_headers: apt-get download produced no .deb" >&2; exit 4; }

mkdir -p "$dest"
rm -rf "$dest/root.new"
dpkg -x "$deb" "$dest/root.new"
rm -rf "$dest/root"
mv "$dest/root.new" "$dest/root"
basename "$deb" > "$dest/PACKAGE"

h=$(find_header "$dest/root")
[ -n "$h" ] || { echo "fetch_ort_headers: $pkg has no onnxruntime_cxx_api.h" >&2; exit 5; }
dirname "$h"
