"""sweeps: the platform around l2d (command line; Ray Tune + Ray Train sweeps, results in Parquet)."""
