"""OHIF 3 (prebuilt `@ohif/app` from the npm registry) served statically, reading Orthanc's
DICOMweb through a same-origin pass-through, for bench/reading.py.

    npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz -C /tmp/ohif   # once

The pass-through only forwards `/dicom-web/...` to Orthanc unchanged (Orthanc sends no CORS
headers); the app's own files are served from `package/dist`, with the SPA's routes falling
back to index.html. Both run in one ThreadingHTTPServer on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

APP_CONFIG = """window.config = {
  routerBasename: '/',
  extensions: [], modes: [], customizationService: {}, showStudyList: true,
  maxNumberOfWebWorkers: 3, showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  showLoadingIndicator: true, strictZSpacingForVolumeViewport: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 25 },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc', name: 'orthanc',
      wadoUriRoot: '/dicom-web', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      staticWado: false, singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


class _Handler(SimpleHTTPRequestHandler):
    orthanc_port = 0
    served: list = []  # (time.monotonic() when the last byte was handed over, path) per DICOMweb answer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith("/dicom-web/"):
            return self._forward()
        if self.path.split("?")[0] == "/app-config.js":
            body = APP_CONFIG.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        local = Path(self.translate_path(self.path.split("?")[0]))
        if not local.exists() or local.is_dir() and not (local / "index.html").exists():
            self.path = "/index.html"  # the single-page app's own routes
        return super().do_GET()

    def _forward(self) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.orthanc_port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request("GET", self.path, headers=headers)
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.served.append((time.monotonic(), self.path))
        upstream.close()


def serve(dist: Path, port: int, orthanc_port: int) -> ThreadingHTTPServer:
    """Start the static app + pass-through in a thread; call .shutdown() to stop it."""
    handler = type("OhifHandler", (_Handler,), {"orthanc_port": orthanc_port, "served": []})
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(dist)))
    server.served = handler.served
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
