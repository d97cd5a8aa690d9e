#!/usr/bin/env bash
# Makes NVIDIA's PyPI CUDA wheels look like a toolkit to the linker:
#  - lib/libX.so -> libX.so.N (the wheels ship only versioned names);
#  - lib/stubs/libcuda.so, a link-only stub of the driver API with SONAME libcuda.so.1,
#    whose symbols are the cu* functions cudarc declares. Never put it on the run-time
#    library path: the driver provides the real one.
set -euo pipefail
cu13=${1:?path to site-packages/nvidia/cu13}
cudarc_src=${2:?path to the cudarc source in the cargo registry}
cd "$cu13/lib"
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  ln -sfn "$lib" "${lib%.so.*}.so"
done
mkdir -p stubs
grep -ohE "^ *pub unsafe fn cu[A-Za-z0-9_]+" "$cudarc_src"/src/driver/sys/*.rs \
  | sed 's/ *pub unsafe fn //' | sort -u \
  | awk '{print "int " $1 "(void) { return 999; }"}' >stubs/libcuda_stub.c
gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda_stub.c
rm stubs/libcuda_stub.c
echo "libcuda stub exports $(nm -D --defined-only stubs/libcuda.so | grep -c ' T cu') symbols"
