from .confidence import ConfidenceScoring
from .least_confident import LeastConfident

__all__ = ["ConfidenceScoring", "LeastConfident"]
