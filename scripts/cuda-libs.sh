# Sourced (bash): makes a CUDA build of arbor ($ARBOR_BIN, default
# target-cuda/release/arbor) runnable on a machine that has the NVIDIA driver but no CUDA
# toolkit, or says plainly why it cannot run there, instead of the dynamic loader's
# "error while loading shared libraries".
#
# The binary links the driver's libcuda.so.1 and CUDA 13's libcudart, libcublas,
# libcublasLt and libcurand. Those four are searched, in order, in $CUDA_LIB_DIR, on the
# loader's path already, and in the nvidia wheels of $PYTHON (default python3), which is
# where a CUDA 13 build of PyTorch keeps them (nvidia/cu13/lib); the directory found is
# put on LD_LIBRARY_PATH. Returns 1 with a message on stderr if anything is missing.
#
# Used by scripts/cuda-run.sh and scripts/gpu-check.sh.

arbor_cuda_libs() {
  local bin=${ARBOR_BIN:-target-cuda/release/arbor}
  if [ ! -x "$bin" ]; then
    echo "no arbor binary at $bin; build it with --features cuda (README: Running on a GPU) or set ARBOR_BIN" >&2
    return 1
  fi
  local missing
  missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}')
  if [ -n "$missing" ] && [ "$missing" != "libcuda.so.1" ]; then
    local dir="" candidate site
    for candidate in ${CUDA_LIB_DIR:-}; do
      [ -e "$candidate/libcublas.so.13" ] && dir=$candidate
    done
    if [ -z "$dir" ] && site=$("${PYTHON:-python3}" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null); then
      for candidate in "$site/nvidia/cu13/lib" "$site"/nvidia/*/lib; do
        if [ -e "$candidate/libcublas.so.13" ]; then
          dir=$candidate
          break
        fi
      done
    fi
    if [ -n "$dir" ]; then
      export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}')
    fi
  fi
  if grep -qx 'libcuda.so.1' <<<"$missing"; then
    echo "cannot run $bin: libcuda.so.1 not found, so this machine has no NVIDIA driver (or it is not on the loader's path). Install the driver (CUDA 13: the 580 series or newer), or run a CPU build with --device cpu." >&2
    return 1
  fi
  if [ -n "$missing" ]; then
    echo "cannot run $bin: CUDA 13 libraries not found: $(echo $missing). Set CUDA_LIB_DIR to the directory holding libcublas.so.13, or PYTHON to a Python with a CUDA 13 build of PyTorch (or pip install nvidia-cuda-runtime nvidia-cublas nvidia-curand for CUDA 13)." >&2
    return 1
  fi
  return 0
}
