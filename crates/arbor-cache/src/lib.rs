//! arbor-cache
