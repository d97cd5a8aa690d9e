//! arbor-kernels
