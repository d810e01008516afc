#!/usr/bin/env bash
# Build .gpu-bundle/: what the GPU machine lacks for benchmarks/gpu.py, to travel with it.
#
# That machine has Python 3.12 and torch but no FFCV, no OpenCV or turbojpeg headers and no
# network. FFCV's Python package carries one compiled file, _libffcv, which it loads with ctypes;
# it is built here against this machine's OpenCV and libjpeg-turbo with Python's limited API
# (Py_LIMITED_API 3.11), so the one .abi3.so loads in Python 3.11 (here) and 3.12 (there). The
# shared libraries it needs, except the C and C++ runtimes and zlib that every Linux has, are
# copied to lib/, where the extension's RPATH finds them (no LD_LIBRARY_PATH: nothing else in
# the process sees them).
#
#   bash benchmarks/gpu_bundle.sh            # writes .gpu-bundle/{site,lib} (about 30 MB)
#
# Needs `make setup` first (the system packages FFCV builds against, and the venv's pip).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.gpu-bundle
PY=${PY:-.venv/bin/python}
FFCV_VERSION=1.0.2
rm -rf "$OUT" && mkdir -p "$OUT/site" "$OUT/lib" "$OUT/src"
grep -qx '/.gpu-bundle/' .git/info/exclude 2>/dev/null || echo '/.gpu-bundle/' >> .git/info/exclude

$PY -m pip download -q --no-deps --no-binary :all: "ffcv==$FFCV_VERSION" -d "$OUT/src"
tar -xzf "$OUT/src/ffcv-$FFCV_VERSION.tar.gz" -C "$OUT/src"
SRC="$OUT/src/ffcv-$FFCV_VERSION"
cp -r "$SRC/ffcv" "$OUT/site/ffcv"
rm -rf "$OUT/site/ffcv/benchmarks"  # FFCV's own benchmark suites: not imported by the library

# The extension, with the flags FFCV's setup.py takes from pkg-config, and the limited API.
g++ -O3 -shared -fPIC -std=c++17 -DPy_LIMITED_API=0x030B0000 \
    $($PY -c 'import sysconfig; print("-I" + sysconfig.get_paths()["include"])') \
    $(pkg-config --cflags opencv4 libturbojpeg) \
    "$SRC/libffcv/libffcv.cpp" -o "$OUT/site/ffcv/_libffcv.abi3.so" \
    -Wl,--as-needed -lopencv_imgproc -lopencv_core -lturbojpeg -lpthread \
    -Wl,--disable-new-dtags,-rpath,'$ORIGIN/../../lib'  # DT_RPATH: also found for the libraries' own needs

# Its shared libraries, but for the C/C++ runtime (the GPU machine's own, newer, are used).
ldd "$OUT/site/ffcv/_libffcv.abi3.so" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
        libc.so*|libm.so*|libstdc++.so*|libgcc_s.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libz.so*) ;;
        *) cp -L "$lib" "$OUT/lib/" ;;
    esac
done
rm -rf "$OUT/src"

# Rehearsal here: every library but the runtimes resolves into lib/, and FFCV imports from the
# bundle alone (not the venv's).
outside=$(ldd "$OUT/site/ffcv/_libffcv.abi3.so" | awk '/=> \//{print $3}' | grep -v "/$OUT/" \
    | grep -Ev '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|libz)\.so' || true)
[ -z "$outside" ] || { echo "libraries not in the bundle: $outside"; exit 1; }
PYTHONPATH="$OUT/site" $PY -c '
import ffcv, ffcv._libffcv as lib
assert ffcv.__file__.startswith("'"$PWD/$OUT"'") or "'"$OUT"'" in ffcv.__file__, ffcv.__file__
print("bundle ok:", ffcv.__file__, lib.__file__)'
du -sh "$OUT"
