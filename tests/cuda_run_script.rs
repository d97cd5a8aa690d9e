//! `scripts/cuda-run.sh`, which runs a CUDA build of arbor on a machine without a CUDA
//! toolkit, against a stand-in binary: a C program linked, like the real one, to
//! `libcuda.so.1` (the driver) and `libcublas.so.13` (CUDA 13), here two stub libraries
//! that the test puts in place or leaves out. Needs `cc`; skipped with a message without.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with `drv/libcuda.so.1`, `tk/libcublas.so.13` and `fake-arbor`
/// linked to both; `None` without a C compiler.
fn stand_in() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-run-script");
    for sub in ["drv", "tk"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("drv.c"), "int drv_call(void) { return 1; }\n").unwrap();
    std::fs::write(dir.join("tk.c"), "int tk_call(void) { return 2; }\n").unwrap();
    std::fs::write(
        dir.join("main.c"),
        "#include <stdio.h>\nint drv_call(void);\nint tk_call(void);\n\
         int main(int argc, char **argv) {\n\
           printf(\"ran %d %s\\n\", drv_call() + tk_call(), argc > 1 ? argv[1] : \"\");\n\
           return 0;\n}\n",
    )
    .unwrap();
    let cc = |args: &[&str]| -> Option<()> {
        let status = Command::new("cc")
            .current_dir(&dir)
            .args(args)
            .status()
            .ok()?;
        assert!(status.success(), "cc {args:?} failed");
        Some(())
    };
    cc(&[
        "-shared",
        "-fPIC",
        "-o",
        "drv/libcuda.so.1",
        "-Wl,-soname,libcuda.so.1",
        "drv.c",
    ])?;
    cc(&[
        "-shared",
        "-fPIC",
        "-o",
        "tk/libcublas.so.13",
        "-Wl,-soname,libcublas.so.13",
        "tk.c",
    ])?;
    cc(&[
        "main.c",
        "-o",
        "fake-arbor",
        "drv/libcuda.so.1",
        "tk/libcublas.so.13",
    ])?;
    Some(dir)
}

/// Runs the script on the stand-in with `LD_LIBRARY_PATH` and `CUDA_LIB_DIR` as given
/// (unset when `None`), and a `PYTHON` that has no nvidia wheels.
fn run(dir: &Path, ld_path: Option<&str>, cuda_lib_dir: Option<&str>) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cuda-run.sh");
    let mut command = Command::new(script);
    command
        .arg("hello")
        .env("ARBOR_BIN", dir.join("fake-arbor"))
        .env("PYTHON", "false")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("CUDA_LIB_DIR");
    if let Some(path) = ld_path {
        command.env("LD_LIBRARY_PATH", dir.join(path));
    }
    if let Some(path) = cuda_lib_dir {
        command.env("CUDA_LIB_DIR", dir.join(path));
    }
    command.output().expect("bash runs the script")
}

#[test]
fn cuda_run_finds_the_cuda_libraries_or_says_which_are_missing() {
    let Some(dir) = stand_in() else {
        eprintln!("skipped: no C compiler (cc) to build the stand-in binary");
        return;
    };
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Driver and CUDA libraries found: the binary runs with the arguments.
    let ok = run(&dir, Some("drv"), Some("tk"));
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ran 3 hello\n");

    // No driver: said so, whatever else is there.
    for cuda_lib_dir in [Some("tk"), None] {
        let out = run(&dir, None, cuda_lib_dir);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("libcuda.so.1 not found"),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("no NVIDIA driver"),
            "{}",
            stderr(&out)
        );
    }

    // A driver but not the CUDA 13 libraries: names them and where to point.
    let out = run(&dir, Some("drv"), None);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("CUDA 13 libraries not found: libcublas.so.13"),
        "{message}"
    );
    assert!(message.contains("CUDA_LIB_DIR"), "{message}");

    // No binary at all.
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cuda-run.sh"))
        .env("ARBOR_BIN", dir.join("no-such-binary"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no arbor binary at"),
        "{}",
        stderr(&out)
    );
}
