"""hifiedit: high-fidelity diffusion-based image editing (Hou, Wei & Chen, AAAI 2024)."""

__version__ = "0.1.0"
