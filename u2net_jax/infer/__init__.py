"""Inference: the sliding window, whole-volume prediction, post-processing, predict, export, review.
"""
