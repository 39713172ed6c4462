# The one application image: api, dicom and worker differ only by command.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends fonts-noto-cjk curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lancang ./lancang
COPY storage ./storage
COPY imaging ./imaging
COPY consult ./consult
COPY film ./film
COPY maternal ./maternal
COPY workspace ./workspace
COPY edge ./edge
COPY web ./web
COPY workers ./workers
RUN pip install --no-cache-dir .
RUN useradd --system --uid 1000 lancang && mkdir -p /data && chown lancang /data
USER lancang
ENV LANCANG_DATA_DIR=/data LANCANG_BIND_HOST=0.0.0.0
EXPOSE 8000 11112
CMD ["lancang", "web"]
