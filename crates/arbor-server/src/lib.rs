//! arbor-server
