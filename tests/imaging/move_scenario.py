"""C-MOVE against dcmtk movescu, run inside a private network namespace.

movescu's own storage SCP (+P) binds 0.0.0.0, so this runs under `unshare -n` (only
loopback exists there): python -m tests.imaging.move_scenario WORKDIR. Prints a JSON verdict.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from imaging.scp import Receiver, start_server
from storage.runtime import bootstrap
from storage.settings import Settings
from storage import service
from tests.dicomdata import ct_instance
from tests.imaging.scu import send_files
from tests.services import free_port


def main(workdir: Path) -> dict:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    runtime = bootstrap(Settings(_env_file=None, data_dir=workdir / "var"), component="test")
    move_port, port = free_port(), free_port()
    with runtime.db.scope() as session:
        service.add_institution(session=session, code="T01", name="镇卫生院", level="township")
        service.add_institution(session=session, code="T02", name="另一镇", level="township")
        service.add_node(session=session, ae_title="MOD1", institution_code="T01",
                         can="store,query,retrieve")
        service.add_node(session=session, ae_title="VIEWER", institution_code="T01", host="127.0.0.1", port=move_port,
                         can="store,query,retrieve")
        service.add_node(session=session, ae_title="FOREIGN", institution_code="T02", host="127.0.0.1", port=move_port,
                         can="store,query,retrieve")
    receiver = Receiver(runtime)
    server = start_server(receiver, runtime.settings, host="127.0.0.1", port=port)
    study = generate_uid()
    blobs = [ct_instance(study_uid=study, instance_number=i) for i in range(1, 7)]
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(workdir / f"in{i}.dcm")
        paths[-1].write_bytes(blob)
    statuses = send_files(port, paths)
    out = workdir / "out"
    out.mkdir()

    def movescu(destination: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["/usr/bin/movescu", "-S", "-aet", "VIEWER", "-aec", "LANCANG", "-aem", destination, "+P", str(move_port),
             "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
             "127.0.0.1", str(port)],
            capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"})

    moved = movescu("VIEWER")
    received = sorted(dcmread(p).SOPInstanceUID for p in out.iterdir())
    sent = sorted(dcmread(io.BytesIO(b)).SOPInstanceUID for b in blobs)
    identical = all(dcmread(out / f"CT.{uid}").PixelData == dcmread(io.BytesIO(b)).PixelData
                    for uid, b in ((dcmread(io.BytesIO(b)).SOPInstanceUID, b) for b in blobs)
                    if (out / f"CT.{uid}").exists())
    for path in out.iterdir():
        path.unlink()
    foreign = movescu("FOREIGN")
    unknown = movescu("NOWHERE")
    server.shutdown()
    return {
        "stored": statuses, "move_rc": moved.returncode, "received": received == sent, "count": len(received),
        "identical": identical, "foreign_rc": foreign.returncode, "foreign_received": len(list(out.iterdir())),
        "unknown_output": unknown.stdout + unknown.stderr, "move_output": moved.stdout[-2000:] + moved.stderr[-2000:],
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
