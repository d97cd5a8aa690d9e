//! Arbor's CUDA kernel sources (`kernels/cuda/*.cu`) compiled by the host C++ compiler
//! against a small CPU emulation of the CUDA features they use
//! (`kernels/cuda/emulator/`), and checked by `harness.cpp` against a double-precision
//! attention written independently of the kernels.
//!
//! This runs on every machine, GPU or not: it checks the kernels' index math, page-table
//! walks, masking, grouped-query head mapping and softmax merging, for f32, bf16 and f16
//! storage. It says nothing about speed or the real intrinsics; the CUDA-vs-CPU model
//! test in `models/tests` and `scripts/gpu-check.sh` do that on a GPU.
//!
//! The compiler is `$CXX`, else `c++`; it must speak C++20 (`std::barrier`) and
//! `_Float16` (GCC 12+, Clang 15+ on x86-64).

use std::path::{Path, PathBuf};
use std::process::Command;

fn compiler() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_string())
}

fn build_harness(out: &Path) -> Result<(), String> {
    let cuda_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let cxx = compiler();
    let output = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-pthread",
            "-Wall",
            "-Wno-unused-function",
        ])
        .arg("-I")
        .arg(cuda_dir.join("emulator"))
        .arg("-I")
        .arg(&cuda_dir)
        .arg(cuda_dir.join("emulator").join("harness.cpp"))
        .arg("-o")
        .arg(out)
        .output()
        .map_err(|e| format!("cannot run the C++ compiler `{cxx}`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{cxx}` failed to build the emulated kernels:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

#[test]
fn cuda_kernel_sources_match_a_reference_under_cpu_emulation() {
    let out: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("arbor-cuda-emulated");
    if let Err(message) = build_harness(&out) {
        // A machine without a C++ compiler cannot run this check; any other build
        // failure (the kernels stopped compiling) is a test failure.
        if message.starts_with("cannot run") {
            eprintln!("skipped: {message}");
            return;
        }
        panic!("{message}");
    }
    let output = Command::new(&out)
        .output()
        .expect("run the emulated kernels");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "emulated CUDA kernels disagree with the reference:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The harness prints one line per case; make sure it ran them all.
    let passed = report.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        passed >= 19,
        "expected at least 19 passing cases, saw {passed}:\n{report}"
    );
    assert!(report.contains("0 failure(s)"), "{report}");
}
