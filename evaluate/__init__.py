"""r2.evaluate: every benchmark's metrics and prediction-file I/O. Imports numpy only."""
