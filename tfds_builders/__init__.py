"""TFDS builders of this project (msd, nnunet, synthetic_organs), usable without TensorFlow.

Build with `python -m tfds_builders build <builder> [--config NAME]
[--manual_dir DIR] [--data_dir DIR]`; datasets land in the standard layout
`<data_dir>/<builder>/<config>/<version>/` (array_record files).
"""
