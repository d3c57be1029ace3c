from .medsam2 import MedSam2Trainer

__all__ = ["MedSam2Trainer"]
