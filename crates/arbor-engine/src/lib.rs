//! arbor-engine
