from .medsam2 import MedSam2InferTask

__all__ = ["MedSam2InferTask"]
