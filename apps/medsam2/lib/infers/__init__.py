from .medsam2 import MedSam2InferTask
from .oneprompt import OnePromptInferTask

__all__ = ["MedSam2InferTask", "OnePromptInferTask"]
