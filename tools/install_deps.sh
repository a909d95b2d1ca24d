#!/usr/bin/env bash
# Installs the Debian packages camotrain needs to build and test, when they are missing.
# Idempotent: prints nothing and exits 0 when everything is present.
set -eu
pkgs="gcc g++ make pkg-config libconfig-dev libstb-dev libopenblas-dev libcjson-dev libcmocka-dev"
# protobuf-c: `camotrain export` writes ONNX files (protoc-c compiles src/nn/onnx.proto)
pkgs="$pkgs protobuf-c-compiler libprotobuf-c-dev"
# OpenMPI: one training over several processes/machines (mpirun, srun --mpi=pmix;
# docs/parallel.md "Several processes"); without it camotrain builds for one machine
[ "${CAMO_WITH_MPI:-1}" = 1 ] && pkgs="$pkgs libopenmpi-dev openmpi-bin"
# gnuplot draws the training and DP-vs-DDP plots; optional for the build itself
[ "${CAMO_WITH_PLOTS:-1}" = 1 ] && pkgs="$pkgs gnuplot-nox"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        cmd="sudo sh -c '$cmd'"
    else
        echo "camotrain: missing packages:$missing" >&2
        echo "camotrain: run as root:  $cmd" >&2
        exit 2
    fi
fi
echo "camotrain: installing$missing" >&2
eval "$cmd" >&2
