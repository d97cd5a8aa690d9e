//! Test and benchmark harness for the Arbor workspace; see `tests/` and `benches/`.
