# splatcast server and client in one image: `splatcast serve`, `splatcast upload`, `splatcast watch`.
# CPU torch by default; the compose `gpu` profile builds with a CUDA wheel index instead.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX}

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY splatcast ./splatcast
RUN pip install --no-cache-dir ".[server,client,scale]"

# Run as an unprivileged user that owns the data volume.
RUN useradd --create-home --uid 10001 splatcast && mkdir -p /data && chown splatcast:splatcast /data
USER splatcast

ENV SPLATCAST_HOST=0.0.0.0 \
    SPLATCAST_PORT=8000 \
    SPLATCAST_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SPLATCAST_PORT', '8000'), timeout=3)"]
CMD ["splatcast", "serve"]
