//! arbor-bench
