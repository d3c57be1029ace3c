"""Driving the OHIF v3 viewer bundled in the monailabel wheel in headless Chromium, as a user does.

Debian's `chromium` and `chromium-driver` (installed by `browser_install` when missing and running as
root), driven by selenium; software WebGL (SwiftShader) for the MPR views; a fresh profile per run (the
panel keeps its server URL in a cookie); host names other than 127.0.0.1 resolve nowhere, so the page
reaches only this machine (the fonts OHIF asks Google for fail, harmlessly). What is read back from the
page is data, not pixels: OHIF keeps cornerstone and its services on `window` for its own tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from debian import apt_install

AXIAL = "mpr-axial"  # the MONAI Label mode's three MPR viewports: mpr-axial, mpr-sagittal, mpr-coronal

CLICK_TEXT = """
const [selector, text] = arguments;
const el = [...document.querySelectorAll(selector)].find(e => e.textContent.trim() === text && e.offsetParent !== null);
if (!el) return false;
el.click();
return true;"""

VOXEL_ON_AXIAL = """
const [i, j, k, viewportId] = arguments;
const viewport = window.cornerstone.getRenderingEngines()[0].getViewport(viewportId);
const imageData = viewport.getImageData().imageData;
const world = imageData.indexToWorld([i, j, k]);
const camera = viewport.getCamera();
const offset = [0, 1, 2].map(a => camera.position[a] - camera.focalPoint[a]);
viewport.setCamera({focalPoint: world, position: [0, 1, 2].map(a => world[a] + offset[a])});  // go to slice k
viewport.render();
const [x, y] = viewport.worldToCanvas(world);
const rect = viewport.canvas.getBoundingClientRect();
return {x: x, y: y, width: rect.width, height: rect.height};"""

CLICKED_VOXELS = """
const manager = window.cornerstoneTools.annotation.state.getAnnotationManager();
const annotations = manager.saveAnnotations(null, 'ProbeMONAILabel');
const imageData = window.cornerstone.getRenderingEngines()[0].getViewport(arguments[0]).getImageData().imageData;
const out = [];
for (const uid in annotations) for (const a of annotations[uid]['ProbeMONAILabel'] || [])
  out.push(imageData.worldToIndex(a.data.handles.points[0]).map(Math.round));  // as the panel sends them
return out;"""

VOLUME_DIMENSIONS = """
const engine = window.cornerstone.getRenderingEngines()[0];
const viewport = engine && engine.getViewport(arguments[0]);
const data = viewport && viewport.getImageData && viewport.getImageData();
return data ? data.imageData.getDimensions() : null;"""

ACTIVE_TOOL_IS_PROBE = """
const group = window.cornerstoneTools.ToolGroupManager.getToolGroupForViewport(arguments[0],
    window.cornerstone.getRenderingEngines()[0].id);
return group && group.getActivePrimaryMouseButtonTool() === 'ProbeMONAILabel';"""

CLICK_LAST_RUN = """
const runs = [...document.querySelectorAll('.tab-content button')]
  .filter(b => b.offsetParent && b.textContent.trim() === 'Run');
runs[runs.length - 1].click();"""

STORE_SEGMENTATION = """
window.__stored = null;
Promise.resolve(window.commandsManager.runCommand('storeSegmentation', {segmentationId: '1'}, 'CORNERSTONE'))
  .then(() => { window.__stored = 'ok'; }).catch(e => { window.__stored = 'error: ' + e; });"""

LABELMAP = """
const volume = window.services.segmentationService.getLabelmapVolume(arguments[0]);
if (!volume) return null;
const data = volume.voxelManager ? volume.voxelManager.getCompleteScalarDataArray() : volume.getScalarData();
let nonzero = 0;
for (let n = 0; n < data.length; n++) if (data[n]) nonzero++;
if (!nonzero) return null;
let text = '';
for (let n = 0; n < data.length; n++) text += String.fromCharCode(data[n]);
return {dims: volume.dimensions, data: btoa(text)};"""


def browser_install() -> dict:
    """Debian's chromium and chromium-driver, installed when missing (as root), else skip with the reason."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium / chromium-driver are not installed and cannot be here "
                        "(needs root and apt-get: apt-get install chromium chromium-driver)")
        r = apt_install("chromium", "chromium-driver")
        if r.returncode != 0:
            pytest.skip(f"apt-get install chromium chromium-driver failed: {(r.stderr or r.stdout)[-800:]}")
    return {"chromium": shutil.which("chromium"), "driver": shutil.which("chromedriver")}


class OhifPage:
    """One headless Chromium on the viewer; screenshots go to `shots`."""

    def __init__(self, install: dict, shots: Path, timeout: float = 120):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait

        options = webdriver.ChromeOptions()
        options.binary_location = install["chromium"]
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(install["driver"]), options=options)
        self.wait = WebDriverWait(self.driver, timeout)
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.driver.quit()

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def click_text(self, selector: str, text: str, timeout: float | None = None) -> None:
        """Click the visible element matching `selector` whose text is `text`, once there is one."""
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(self.driver, timeout) if timeout else self.wait
        wait.until(lambda d: d.execute_script(CLICK_TEXT, selector, text))

    def until(self, script: str, *args, timeout: float | None = None):
        """The first truthy value of `script` (JavaScript, run repeatedly)."""
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(self.driver, timeout) if timeout else self.wait
        return wait.until(lambda d: d.execute_script(script, *args))

    def volume_dimensions(self, viewport: str = AXIAL) -> list[int]:
        """The (I, J, K) size of the volume in `viewport`, once the viewer has it."""
        return list(self.until(VOLUME_DIMENSIONS, viewport))

    def connect(self) -> None:
        """The MONAI Label panel's connect button, next to its server URL."""
        self.driver.execute_script("document.querySelector('.settingsTable .actionButton').click()")

    def choose_label(self, name: str, viewport: str = AXIAL) -> None:
        """A label under Point Prompts; then the panel's point tool takes the left mouse button."""
        self.click_text("tr.clickable-row td", name)
        self.until(ACTIVE_TOOL_IS_PROBE, viewport)

    def run_point_prompts(self) -> None:
        """Point Prompts' Run button."""
        self.driver.execute_script(CLICK_LAST_RUN)

    def store_with_ohif(self, report_name: str, shot: str | None = None) -> str:
        """OHIF's own storeSegmentation command (what its segmentation panel's Store runs), its Create
        Report dialog filled in and saved; "ok" or the error the command ended with."""
        self.driver.execute_script(STORE_SEGMENTATION)
        self.until("return document.activeElement && document.activeElement.tagName === 'INPUT'")
        if shot:
            self.shot(shot)
        self.driver.switch_to.active_element.send_keys(report_name)
        self.click_text("button", "Save")
        return self.until("return window.__stored")

    def click_voxel(self, i: int, j: int, k: int, viewport: str = AXIAL) -> None:
        """Scroll the viewport to slice k and click voxel (i, j) there with the mouse."""
        from selenium.webdriver.common.action_chains import ActionChains

        at = self.driver.execute_script(VOXEL_ON_AXIAL, i, j, k, viewport)
        time.sleep(0.5)  # the render after the camera move
        canvas = self.driver.execute_script(
            "return window.cornerstone.getRenderingEngines()[0].getViewport(arguments[0]).canvas", viewport)
        ActionChains(self.driver).move_to_element_with_offset(
            canvas, at["x"] - at["width"] / 2, at["y"] - at["height"] / 2).click().perform()

    def clicked_voxels(self, viewport: str = AXIAL, timeout: float = 10) -> list[list[int]]:
        """The point tool's clicks as voxel indices, rounded as the panel rounds them (once there are any)."""
        try:
            return self.until(f"const v = (() => {{ {CLICKED_VOXELS} }})(); return v.length ? v : null;", viewport,
                              timeout=timeout)
        except Exception:
            return self.driver.execute_script(CLICKED_VOXELS, viewport)

    def labelmap(self, segmentation_id: str = "1", timeout: float | None = None) -> np.ndarray:
        """The panel's labelmap, (I, J, K) like the server's files, once it holds something."""
        import base64

        found = self.until(LABELMAP, segmentation_id, timeout=timeout)
        flat = np.frombuffer(base64.b64decode(found["data"]), dtype=np.uint8)
        I, J, K = found["dims"]
        return flat.reshape(K, J, I).transpose(2, 1, 0)  # i fastest in the page's buffer

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]
