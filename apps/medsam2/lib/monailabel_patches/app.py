"""What the app changes in `MONAILabelApp`: the checked datastores (datastore.py, dicomweb.py), no
download at start-up, the infer task names through a method rather than a private attribute. The app
sets `self.settings` (ServerSettings) before MONAI Label builds the datastore.

A mixin, not a subclass: MONAI Label 0.8.5 loads the class of `main.py` whose *direct* base is named
`MONAILabelApp` (`class_utils.is_subclass`), so the app is declared
`class MedSam2App(PatchedApp, MONAILabelApp)`.

MONAI Label 0.8.5's `init_remote_datastore` calls `_download_dcmqi_tools`, which fetches dcmqi from
GitHub: without internet access a server started on a DICOMweb URL never comes up. DICOM-SEG is
written without it (dicomweb.py).
"""

from __future__ import annotations

from monailabel.config import settings

from . import dicomweb
from .datastore import CheckedLocalDatastore


class PatchedApp:
    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()  # MONAI Label's: calls init_remote_datastore
        return CheckedLocalDatastore(self.studies, max_voxels=self.settings.max_voxels,
                                     extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                     auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                     read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_remote_datastore(self):
        return dicomweb.with_seg_writer(super().init_remote_datastore(), self.app_dir,
                                        list(self.settings.dicomweb_modalities))

    def _download_dcmqi_tools(self):
        pass  # see the module docstring; lib/monailabel_patches/dicomweb.py writes DICOM-SEG without dcmqi

    def infer_names(self) -> list[str]:
        """The names of the infer tasks MONAI Label built (`init_infers`)."""
        return list(self._infers)
