//! Choosing where a model runs: a `--device` string (`cpu`, `cuda`, `cuda:N`) parsed into
//! a [`DeviceSpec`], opened into a Candle [`Device`] with a clear error when the build or
//! the machine cannot provide it.
//!
//! A build with the `cuda` feature links the CUDA libraries at load time: on a machine
//! without the NVIDIA driver the process does not start at all (the dynamic loader names
//! the missing `libcuda.so.1`). With the driver present but no usable GPU, opening the
//! device fails here with [`DeviceError::Unavailable`].

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use thiserror::Error;

/// A device named on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// Why a device could not be named or opened.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The string is not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device {given:?}: expected cpu, cuda or cuda:N (N = GPU ordinal)")]
    Parse {
        /// The string as given.
        given: String,
    },
    /// A CUDA device was asked of a build without the `cuda` feature.
    #[error(
        "device cuda:{ordinal} needs a CUDA build of arbor (cargo build --features cuda, \
         after `source scripts/cuda-env.sh`); this build runs on the CPU only"
    )]
    NotCompiled {
        /// The ordinal asked for.
        ordinal: usize,
    },
    /// The CUDA driver or GPU could not be opened.
    #[error(
        "cannot open CUDA device {ordinal}: {reason}. Check that an NVIDIA GPU is visible \
         (nvidia-smi), that its driver supports CUDA 13, and that CUDA_VISIBLE_DEVICES \
         leaves GPU {ordinal}"
    )]
    Unavailable {
        /// The ordinal asked for.
        ordinal: usize,
        /// The driver's or Candle's own message.
        reason: String,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    /// Parses `cpu`, `cuda` or `cuda:N` (case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let parse_error = || DeviceError::Parse {
            given: s.to_string(),
        };
        match lower.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => {
                let ordinal = other.strip_prefix("cuda:").ok_or_else(parse_error)?;
                ordinal
                    .parse::<usize>()
                    .map(Self::Cuda)
                    .map_err(|_| parse_error())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device: the CPU always; a CUDA GPU only in a `cuda` build with a driver
    /// and that GPU present.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

/// Whether this build can run on CUDA at all (the `cuda` feature).
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// Parses and opens a `--device` string in one step.
pub fn open_device(spec: &str) -> Result<Device, DeviceError> {
    spec.parse::<DeviceSpec>()?.open()
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    // cudarc returns errors for a missing GPU, but some driver states make it panic
    // instead; either way the user gets one clear start-up error.
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    match opened {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(err)) => Err(DeviceError::Unavailable {
            ordinal,
            reason: err.to_string(),
        }),
        Err(panic) => Err(DeviceError::Unavailable {
            ordinal,
            reason: panic_message(panic.as_ref()),
        }),
    }
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { ordinal })
}

/// The text of a caught panic payload.
#[cfg(feature = "cuda")]
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the CUDA driver panicked while opening the device".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cuda_and_cuda_with_an_ordinal_parse() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!(" CUDA ".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
    }

    #[test]
    fn malformed_devices_are_refused_with_the_accepted_forms() {
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert_eq!(
                err,
                DeviceError::Parse {
                    given: bad.to_string()
                }
            );
            assert!(err.to_string().contains("cpu, cuda or cuda:N"), "{err}");
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(0), DeviceSpec::Cuda(7)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>(), Ok(spec));
        }
    }

    #[test]
    fn the_cpu_always_opens() {
        assert!(open_device("cpu").unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_only_build_refuses_cuda_and_says_how_to_get_it() {
        let err = open_device("cuda:1").unwrap_err();
        assert_eq!(err, DeviceError::NotCompiled { ordinal: 1 });
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn a_missing_gpu_is_an_error_not_a_panic() {
        // On a GPU machine ordinal 4096 does not exist; without one nothing does.
        let err = open_device("cuda:4096").unwrap_err();
        assert!(
            matches!(err, DeviceError::Unavailable { ordinal: 4096, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("nvidia-smi"), "{err}");
    }
}
