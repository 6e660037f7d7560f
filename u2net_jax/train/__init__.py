"""Training: the loop, its state and checkpoints, losses, optimizers, schedules, domain extension.
"""
