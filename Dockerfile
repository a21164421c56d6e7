# splatcast server and client in one image: `splatcast serve`, `splatcast upload`, `splatcast watch`.
# CPU torch by default; the compose `gpu` profile builds with a CUDA wheel index instead.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX}

WORKDIR /app
COPY pyproject.toml README.md ./
COPY splatcast ./splatcast
RUN pip install --no-cache-dir .

ENV SPLATCAST_HOST=0.0.0.0 \
    SPLATCAST_PORT=8000 \
    SPLATCAST_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
CMD ["splatcast", "serve"]
