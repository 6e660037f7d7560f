"""Data: NIfTI I/O, invertible preprocessing and the input pipeline."""
