//! Compiles `cuda/*.cu` to PTX with nvcc when the `cuda` feature is on; does nothing
//! otherwise, so CPU builds need no CUDA toolkit.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc` (or `$CUDA_PATH`), else `nvcc` on `PATH`
//! (`source scripts/cuda-env.sh` sets these up). The PTX targets the virtual
//! architecture `compute_$CUDA_COMPUTE_CAP` (the variable Candle's kernels read, e.g.
//! `90` for H100/H200); without it, the first GPU `nvidia-smi` reports, else `80`. The
//! driver JIT-compiles PTX for the GPU it runs on, so any newer GPU runs it too.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources, each compiled to `$OUT_DIR/<name>.ptx`.
const KERNELS: &[&str] = &["kv_write", "paged_attention"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "NVCC_CCBIN",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    if let Err(message) = compile_all() {
        // A build script reports failure by exiting non-zero; the message is what the
        // user sees under "failed to run custom build command".
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn compile_all() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let nvcc = nvcc();
    let cap = compute_cap();
    for name in KERNELS {
        let src = manifest_dir.join("cuda").join(format!("{name}.cu"));
        let ptx = out_dir.join(format!("{name}.ptx"));
        compile(&nvcc, &src, &ptx, &cap)?;
    }
    Ok(())
}

/// The nvcc to run.
fn nvcc() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        return nvcc.into();
    }
    for home in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(home) {
            let candidate = Path::new(&home).join("bin").join("nvcc");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    "nvcc".into()
}

/// The compute capability to target, as digits (`"90"`).
fn compute_cap() -> String {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return cap.trim().trim_end_matches(['a', 'f']).replace('.', "");
    }
    let queried = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(|l| l.trim().replace('.', "")))
        .filter(|cap| !cap.is_empty());
    match queried {
        Some(cap) => cap,
        None => {
            println!(
                "cargo::warning=CUDA_COMPUTE_CAP is unset and nvidia-smi found no GPU; \
                 building Arbor's kernels for compute_80"
            );
            "80".to_string()
        }
    }
}

fn compile(nvcc: &Path, src: &Path, ptx: &Path, cap: &str) -> Result<(), String> {
    let mut cmd = Command::new(nvcc);
    cmd.arg("--ptx")
        .arg(format!("-arch=compute_{cap}"))
        .args(["-O3", "-std=c++17", "--Werror", "all-warnings"])
        .arg("-I")
        .arg(src.parent().unwrap_or(Path::new(".")))
        .arg("-o")
        .arg(ptx)
        .arg(src);
    if let Some(ccbin) = env::var_os("NVCC_CCBIN") {
        cmd.arg("-ccbin").arg(ccbin);
    }
    let status = cmd.status().map_err(|e| {
        format!(
            "cannot run {} ({e}); install a CUDA toolkit or `source scripts/cuda-env.sh`",
            nvcc.display()
        )
    })?;
    if !status.success() {
        return Err(format!("nvcc failed on {} ({status})", src.display()));
    }
    Ok(())
}
