"""edgekit: compress, compile and benchmark multimodal fusion models for edge devices."""
__version__ = "0.1.0"
