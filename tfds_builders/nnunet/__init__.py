"""nnU-Net v2 raw dataset builder: DatasetXXX_Name folders -> TFDS (nnunet.py, raw.py)."""
