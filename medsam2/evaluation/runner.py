"""The benchmark loop: for every case, structure and memory policy, run a protocol through the engine.

It runs exactly what the infer task runs: `Segmenter.open` once per image (slices encoded once,
shared by all structures and policies), then `Segmenter.segment` with the prompts so far after every
interaction. Each structure is prompted as its own object, so structures never compete for voxels.
One record per (case, structure, policy, interaction).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ..propagation import Segmenter
from .datasets import Case, load_case, structures_in
from .metrics import structure_metrics
from .protocols import Protocol, simulate


def memory_policies() -> dict:
    """Policy name -> factory (None = SAM2's own fifo rule), at the server's default capacity."""
    from ..memory import policy_factories

    return policy_factories()


@contextlib.contextmanager
def quiet_propagation():
    """Silence sam2's own per-propagation progress bar, which would bury the per-case bar."""
    import sam2.sam2_video_predictor as video_predictor

    original = video_predictor.tqdm
    video_predictor.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        video_predictor.tqdm = original


@dataclass
class RunSettings:
    protocol: Protocol
    policies: list[str] = field(default_factory=lambda: ["fifo"])
    tolerance_mm: float = 2.0
    seed: int = 0
    structures: dict[str, list[int]] | None = None  # name -> label values; None: every value present


def case_rng(seed: int, case_id: str, structure: str) -> np.random.Generator:
    """A generator that depends only on the seed, the case and the structure (not on run order)."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), zlib.crc32(structure.encode())])


def evaluate_volume(segmenter: Segmenter, case_id: str, image: np.ndarray, label: np.ndarray, spacing,
                    settings: RunSettings, progress: bool = True) -> list[dict]:
    """All records of one volume (an opened image shared by its structures and policies)."""
    registry = memory_policies()
    unknown = [p for p in settings.policies if p not in registry]
    if unknown:
        raise ValueError(f"unknown memory policy {unknown}: use {sorted(registry)}")
    structures = structures_in(label, settings.structures)
    session = segmenter.open(image)  # slices encoded once, for every structure and policy
    total = len(structures) * len(settings.policies) * settings.protocol.interactions
    records = []
    bar = tqdm(total=total, desc=case_id, unit="interaction", disable=not progress, leave=True)
    with bar, quiet_propagation():
        for name, values in structures.items():
            truth = np.isin(label, values)
            others = (label > 0) & ~np.isin(label, [v for vs in structures.values() if set(vs) & set(values) for v in vs])
            for policy in settings.policies:
                factory = registry[policy]

                def predict(obj, factory=factory):
                    return segmenter.segment(session, [obj], memory_policy_factory=factory).label > 0

                key_slice, done = None, 0
                rng = case_rng(settings.seed, case_id, name)
                for n, (step, pred, seconds) in enumerate(simulate(settings.protocol, truth, predict, rng, name), 1):
                    key_slice = step.k if key_slice is None else key_slice
                    records.append({
                        "case": case_id, "structure": name, "policy": policy, "interaction": n,
                        **step.as_dict(), "seconds": round(seconds, 4), "encode_s": round(session.opened_s, 4),
                        **structure_metrics(pred, truth, spacing, settings.tolerance_mm, key_slice, others),
                        "truth_voxels": int(truth.sum()), "pred_voxels": int(pred.sum()),
                        "spacing": [float(s) for s in spacing],
                    })
                    bar.update(1)
                    done = n
                bar.update(settings.protocol.interactions - done)  # stopped early: nothing left to correct
    return records


def evaluate_cases(segmenter: Segmenter, cases: list[Case], settings: RunSettings, progress: bool = True) -> list[dict]:
    torch.manual_seed(settings.seed)
    records = []
    for case in cases:
        image, label, spacing = load_case(case)
        records += evaluate_volume(segmenter, case.id, image, label, spacing, settings, progress)
    return records
