from .medsam2 import MedSam2Config

__all__ = ["MedSam2Config"]
