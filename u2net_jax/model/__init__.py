"""The 3D U-Net: layers, dense and depthwise convolutions, the universal model, one-domain views.

Imports only the core modules (u2net_jax/__init__.py has the rule).
"""
