# cdc-connector as a container sidecar: `cdc run /etc/cdc/connector.yaml`.
# Probes: GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus) on the `server` port (8083).
# SIGTERM stops cleanly: the source flushes Kafka and confirms its LSN, the sink finishes its batch.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY connector ./connector
COPY sources ./sources
COPY sinks ./sinks
COPY transforms ./transforms
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 cdc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER cdc
WORKDIR /home/cdc
EXPOSE 8083
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8083/healthz', timeout=2)" || exit 1
ENTRYPOINT ["cdc"]
CMD ["run", "/etc/cdc/connector.yaml"]
