"""The app's datastore (apps/medsam2/lib/monailabel_patches/datastore.py) without the server: what other processes write
reaches the server's view of it.

MONAI Label runs scoring and training in subprocesses that write `datastore_v2.json` themselves (a
confidence score per image); the server learns of it from its file watcher. Atomic saves arrive as
renames, which MONAI Label's watcher ignores, so "next sample" once kept handing out images by stale
scores. The save-and-kill guarantees are tested against the real server in test_faults_e2e.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

APP = Path(__file__).resolve().parent.parent / "apps" / "medsam2"
sys.path.insert(0, str(APP))

from lib.monailabel_patches.datastore import CheckedLocalDatastore  # noqa: E402

WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from lib.monailabel_patches.datastore import CheckedLocalDatastore
CheckedLocalDatastore(sys.argv[2], auto_reload=False).update_image_info("a", {"medsam2_confidence": 0.25})
"""


def test_image_info_written_by_another_process_reaches_the_server_datastore(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(tmp_path / "a.nii.gz"))
    server = CheckedLocalDatastore(str(tmp_path), auto_reload=True)
    try:
        assert "medsam2_confidence" not in server.get_image_info("a")
        subprocess.run([sys.executable, "-c", WRITER, str(APP), str(tmp_path)], check=True, timeout=120)
        assert not list(tmp_path.glob(".*.part")), "the writer left a temporary file"
        deadline = time.monotonic() + 10
        while server.get_image_info("a").get("medsam2_confidence") != 0.25:
            assert time.monotonic() < deadline, f"not seen after 10 s: {server.get_image_info('a')}"
            time.sleep(0.1)
        server.update_image_info("a", {"medsam2_confidence": 0.75})  # its own write still lands and sticks
        time.sleep(0.5)
        assert server.get_image_info("a")["medsam2_confidence"] == 0.75
        assert '"medsam2_confidence": 0.75' in (tmp_path / "datastore_v2.json").read_text()
    finally:
        observer = getattr(server, "_observer", None)
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)
