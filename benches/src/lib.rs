//! Criterion benchmarks for Courier; see `benches/`.
