"""Accuracy benchmark: a simulated clinician prompts the engine; Dice and NSD per structure.

metrics (Dice, NSD, slice coverage), protocols (where the clinician boxes and clicks), datasets (a
MONAI Label datastore folder, bundled phantoms, the MNI152 brain), runner (the loop over cases,
structures, memory policies and interactions), report (tables, JSON, CSV, plot). The command line is
`python -m medsam2.evaluate`.
"""
