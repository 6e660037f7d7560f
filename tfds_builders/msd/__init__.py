"""Medical Segmentation Decathlon (MSD) builder: NIfTI task folders -> TFDS (msd.py)."""
