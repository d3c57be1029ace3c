"""An OHIF annotator's whole loop in a real browser: open, click, overlay, store, label listed, train, next sample.

Orthanc on 127.0.0.1 holds two CT studies; the app serves the demo model on it; headless Chromium
opens the OHIF v3 viewer the app serves at /ohif/ (tests/ohif_page.py) and does what a user does. The
tests run in order and share the page. Screenshots land in test-artifacts/ohif/ (the README's come
from there). Select them with `-m browser`; skipped with the reason where Chromium or Orthanc cannot be
installed (not root, no apt-get).
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import nrrd
import numpy as np
import pydicom
import pytest
import requests

from conftest import REPO, DEMO_CONFIG, start_server, stop_server, wait_for_task
from medsam2.clicks import interior_point
from ohif_page import OhifPage, browser_install
from test_dicomweb_e2e import (SHAPE, app_env, fetch_seg, orthanc, orthanc_install, seg_masks,  # noqa: F401
                               seg_series, store, validate, write_ct_series)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ARTEFACTS = REPO / "test-artifacts" / "ohif"


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory):
    """The study the annotator labels, and another one for "next sample". The labelled series' id sorts
    first: with no confidence scores yet, `least_confident` would hand it over again if its SEG did not count."""
    first, second = sorted((write_ct_series(tmp_path_factory.mktemp("ct"), seed=700) for _ in range(2)),
                           key=lambda series: series.series)
    for path in second.files:  # another patient, so that the study list tells the two apart
        ds = pydicom.dcmread(str(path))
        ds.PatientID, ds.PatientName = "MEDSAM2-NEXT", "Phantom^Next"
        ds.save_as(str(path))
    return store(orthanc, first), store(orthanc, dataclasses.replace(second, patient_id="MEDSAM2-NEXT"))


@pytest.fixture(scope="module")
def app(orthanc, studies, trained_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("browser_logs") / "server.log"
    conf = {"checkpoint": trained_checkpoint, "model_config": DEMO_CONFIG,
            "model_dir": tmp_path_factory.mktemp("browser_model")}
    server = start_server(orthanc.dicomweb, conf, log, app_env(tmp_path_factory))
    yield server
    stop_server(server.proc)


@pytest.fixture(scope="module")
def page(app):
    install = browser_install()
    shutil.rmtree(ARTEFACTS, ignore_errors=True)
    p = OhifPage(install, ARTEFACTS)
    p.started = time.time()
    yield p
    print(f"\nOHIF loop in the browser: {time.time() - p.started:.0f} s; console errors: {p.console_errors()}")
    p.close()


@pytest.fixture(scope="module")
def loop() -> dict:
    """What one step of the loop hands to the next."""
    return {}


def organ_voxel(series) -> list[int]:
    k = SHAPE[2] // 2
    i, j = interior_point(series.truth[:, :, k].T == 1)
    return [i, j, k]


def test_the_study_list_shows_the_study_and_the_monai_label_mode_opens_it(app, studies, page):
    first, _ = studies
    page.driver.get(f"{app.url}/ohif/")
    page.click_text("span", first.patient_id)  # the study's row: its modes appear
    page.click_text("button", "MONAI Label")
    page.click_text("button", "Confirm and Hide")
    assert f"StudyInstanceUIDs={first.study}" in page.driver.current_url
    assert page.volume_dimensions() == list(SHAPE)  # the CT, read through the app's /proxy/dicom
    page.shot("1_mode_opened")


def test_the_panel_connects_to_this_server_without_typing(app, page):
    field = page.driver.find_element("id", "monailabelServerURL")
    assert field.get_attribute("value") == f"{app.url}/"  # from the cookie the app set, not port 8000
    page.connect()
    page.click_text("label.tab-label", "Point Prompts")
    models = page.driver.execute_script(
        "return [...document.querySelectorAll('.tab-content select option')].map(o => o.textContent.trim())")
    assert "medsam2" in models


def test_a_click_with_the_point_tool_draws_the_servers_answer_on_every_slice(app, studies, page, loop, tmp_path):
    first, _ = studies
    page.choose_label("organ")
    i, j, k = organ_voxel(first)
    page.click_voxel(i, j, k)
    clicked = page.clicked_voxels()
    page.shot("2_clicked")
    assert clicked == [[i, j, k]]
    t0 = time.time()
    page.run_point_prompts()
    shown = page.labelmap(timeout=240)
    loop["click_s"] = time.time() - t0
    page.shot("3_overlay")
    # the server's answer to the same body (what PointPrompts sends for a deepgrow model)
    body = {"foreground": clicked, "background": [], "result_extension": ".nrrd", "result_dtype": "uint8",
            "result_compress": False, "restore_label_idx": False}
    r = app.post_infer(first.series, body)
    assert r.status_code == 200, r.text
    (tmp_path / "server.nrrd").write_bytes(r.content)
    answer = nrrd.read(str(tmp_path / "server.nrrd"))[0]
    assert shown.shape == answer.shape == SHAPE
    np.testing.assert_array_equal(shown > 0, answer > 0)  # voxel for voxel
    covered = np.nonzero((shown > 0).any(axis=(0, 1)))[0]
    assert covered.min() < k < covered.max()  # a 3D mask, not the clicked slice alone
    loop["shown"] = shown > 0


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="on the clicked slice the shipped demo model picks a candidate with part of "
                                       "the organ and part of the vessel (Dice 0.66; its best candidate 0.84), and "
                                       "memory follows that (3D Dice 0.54; from the true slice 0.90: docs/demo-model.md, "
                                       "'Stage 3 on twins after the shipped stage 2'); a demo model that passes makes "
                                       "this test fail: remove the mark")
def test_a_click_on_the_organ_gives_the_organ_in_3d(studies, loop):
    from medsam2.evaluation.metrics import dice

    first, _ = studies
    organ = dice(loop["shown"], first.truth == 1)
    assert organ >= 0.8, f"3D Dice of the organ {organ:.2f}, of the vessel {dice(loop['shown'], first.truth == 2):.2f}"


def wait_for_new_seg(orthanc, study: str, before: set, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while not (new := seg_series(orthanc, study) - before):
        assert time.time() < deadline, "no new DICOM-SEG series in the PACS"
        time.sleep(1)
    assert len(new) == 1, new
    return new.pop()


def test_the_panels_save_label_option_stores_the_answer_as_a_seg_through_the_app(app, orthanc, studies, page, loop,
                                                                                 tmp_path):
    """The closest working path to a label from OHIF: the panel's Options, infer, medsam2, save_label ticked;
    the next Run stores its answer as the image's label, a DICOM-SEG the app writes on the CT's grid."""
    first, _ = studies
    before = seg_series(orthanc, first.study)
    page.click_text("a", "Options / Configurations")
    page.until("""const row = [...document.querySelectorAll('tr')].find(r => r.offsetParent && r.cells.length > 1
        && r.cells[0].textContent.trim() === 'save_label');
        if (!row) return false;
        const box = row.querySelector('input[type=checkbox]');
        if (!box.checked) box.click();
        return box.checked;""")
    page.shot("4_save_label_option")
    page.click_text("button", "Confirm")
    page.run_point_prompts()
    seg_uid = wait_for_new_seg(orthanc, first.study, before)
    seg, path = fetch_seg(orthanc, first.study, seg_uid, tmp_path)
    validate(path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.series
    masks = seg_masks(seg, first)
    assert list(masks) == ["object"]  # the panel does not say which label a click is for (docs/deployment.md)
    np.testing.assert_array_equal(masks["object"], loop["shown"])  # what was shown, on the CT's grid


def test_storing_the_segmentation_puts_a_dicom_seg_of_the_ct_in_the_pacs(app, orthanc, studies, page, loop, tmp_path):
    """OHIF's own store command (its segmentation panel's Store runs it; the MONAI Label mode shows no
    segmentation panel, see docs/deployment.md), its Create Report dialog, then STOW through the app's
    /proxy/dicom to Orthanc."""
    first, _ = studies
    page.until("return !document.querySelector('[role=dialog]')")  # the Options dialog has gone
    before = seg_series(orthanc, first.study)
    assert page.store_with_ohif("MedSAM-2 organ", shot="5_store_dialog") == "ok"
    loop["seg_series"] = seg_uid = wait_for_new_seg(orthanc, first.study, before)
    seg, path = fetch_seg(orthanc, first.study, seg_uid, tmp_path)
    # OHIF writes its own name, 17 characters, into the file meta's 16-character Implementation Version
    # Name (0002,0013): the one error dciodvfy reports, OHIF's, not in the segmentation itself
    validate(path, known=("(0x0002,0x0013)",))
    assert seg.Modality == "SEG" and seg.SeriesDescription == "MedSAM-2 organ"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.series
    masks = seg_masks(seg, first)
    assert "organ" in masks
    # each frame placed by its own references (seg_masks checks its position against that CT slice): the
    # SEG holds what was shown, mirrored head to feet (OHIF's writer: docs/deployment.md, "OHIF")
    np.testing.assert_array_equal(masks["organ"], loop["shown"][:, :, ::-1])
    loop["seg_organ"] = masks["organ"]


@pytest.mark.xfail(strict=True, reason="the bundled OHIF (3.x, d8ef36e) writes a SEG's frames in reverse slice order "
                                       "when InstanceNumber rises with z: the stored mask is mirrored head to feet")
def test_the_stored_seg_holds_what_was_shown(loop):
    np.testing.assert_array_equal(loop["seg_organ"], loop["shown"])


def test_the_datastore_counts_the_seg_as_the_images_label_at_once(app, studies, loop):
    first, second = studies
    stats = requests.get(f"{app.url}/datastore/", params={"output": "stats"}, timeout=60).json()
    assert stats["total"] == 2 and stats["completed"] == 1


def test_training_on_the_stored_label_runs_from_the_panels_server(app, loop):
    r = requests.post(f"{app.url}/train/medsam2", json={"max_steps": 2, "val_every": 2, "clip_len": 4, "seed": 0},
                      timeout=60)
    assert r.status_code == 200, r.text
    status = wait_for_task(app.url, "train", 240)
    assert status["status"] == "DONE", status.get("details")
    stats = requests.get(f"{app.url}/info/", timeout=30).json()["train_stats"]["medsam2"]
    assert stats["train_images"] + stats["val_images"] == 1  # the one image OHIF stored a SEG for
    loop["train_stats"] = stats


def test_next_sample_in_the_panel_hands_over_the_other_study(app, studies, page):
    """The panel's Next Sample. Its strategy selector changes nothing (OHIF panel 0.8.5 never defines
    its onChange handler), so it always asks for `random`: among the unlabelled images, which only
    leaves the other study once the stored SEG counts."""
    first, second = studies
    page.click_text("label", "Active Learning")
    page.click_text("button", "Next Sample")
    text = page.until("""const title = [...document.querySelectorAll('*')].find(e => e.offsetParent
        && e.children.length === 0
        && e.textContent.trim() === 'Active Learning - Next Sample');
        const dialog = title && title.closest('[role=dialog]') || (title && title.parentElement.parentElement);
        return dialog ? dialog.innerText : null;""", timeout=120)
    page.shot("6_next_sample")
    assert second.series in text and first.series not in text


def test_ohifs_own_store_is_right_when_instance_numbers_run_against_z(app, orthanc, page, tmp_path_factory):
    """What decides OHIF's mirrored SEG: the same store on a series whose InstanceNumber falls as z rises
    (a scanner going head to feet) writes the mask where it was shown."""
    descending = write_ct_series(tmp_path_factory.mktemp("ct_descending"), seed=700)
    for k, path in enumerate(descending.files):
        ds = pydicom.dcmread(str(path))
        ds.InstanceNumber = SHAPE[2] - k
        ds.PatientID = "MEDSAM2-DESC"
        ds.save_as(str(path))
    series = store(orthanc, dataclasses.replace(descending, patient_id="MEDSAM2-DESC"))
    page.driver.get(f"{app.url}/ohif/monai-label?StudyInstanceUIDs={series.study}")
    assert page.volume_dimensions() == list(SHAPE)
    page.connect()
    page.click_text("label.tab-label", "Point Prompts")
    page.choose_label("organ")
    page.click_voxel(*organ_voxel(series))
    assert page.clicked_voxels() == [organ_voxel(series)]
    page.run_point_prompts()
    shown = page.labelmap(timeout=240) > 0
    before = seg_series(orthanc, series.study)
    assert page.store_with_ohif("MedSAM-2 organ") == "ok"
    seg, _ = fetch_seg(orthanc, series.study, wait_for_new_seg(orthanc, series.study, before),
                       tmp_path_factory.mktemp("seg_descending"))
    np.testing.assert_array_equal(seg_masks(seg, series)["organ"], shown)
