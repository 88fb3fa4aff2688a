# Sourced by scripts/run, scripts/test and scripts/bench: installs the Debian packages parexd
# builds and tests with, and nothing when they are all present (quiet and idempotent).

PX_PACKAGES="gcc make cmake pkg-config libuv1-dev libjansson-dev libxxhash-dev libcmocka-dev \
libmicrohttpd-dev libsystemd-dev libcurl4-openssl-dev python3 netcat-openbsd scdoc \
libnats-dev"
# prometheus: promtool; mandoc: man page lint; dpkg-dev, file: cpack's shlibs dependencies;
# lintian: the package check; nats-server: the cluster tests.
PX_TEST_PACKAGES="prometheus systemd clang-14 libclang-rt-14-dev python3-venv python3-setuptools \
python3-wheel mandoc dpkg-dev file lintian nats-server"

px_install() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "parexd: missing Debian packages:$missing (run as root, or: apt-get install$missing)" >&2
        return 1
    fi
    echo "parexd: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null &&
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# px_build DIR BUILD_TYPE [cmake args...]: configure once, then build incrementally.
px_build() {
    dir=$1 type=$2
    shift 2
    if [ ! -f "$dir/CMakeCache.txt" ]; then
        cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" "$@" >/dev/null || return 1
    fi
    cmake --build "$dir" -j"$(nproc)" -- --no-print-directory >"$dir/build.log" 2>&1 ||
        { cat "$dir/build.log" >&2; return 1; }
}
