"""The DICOM receiver process (placeholder replaced by the full SCP below in issue 3)."""

from __future__ import annotations

import logging

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from lancang.runtime import bootstrap
from lancang.settings import Settings

log = logging.getLogger("lancang.dicom")


def run_receiver(settings: Settings) -> None:
    runtime = bootstrap(settings, component="dicom")
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.add_supported_context(Verification)
    ae.start_server((settings.bind_host, settings.dicom_port), block=True,
                    evt_handlers=[(evt.EVT_C_ECHO, lambda event: 0x0000)])
