"""fedlego: federated multimodal model merging (MM-Lego) for hospitals."""

__version__ = "0.1.0"
