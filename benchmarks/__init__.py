"""blazemesh benchmarks."""
