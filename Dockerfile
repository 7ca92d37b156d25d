# Slim, non-root image of the service. The database comes from DATABASE_URL (see
# docker-compose.yml); without it the embedded PostgreSQL starts under /data.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 wavy && mkdir /data && chown wavy /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER wavy
WORKDIR /home/wavy
ENV WAVY_HOST=0.0.0.0 \
    WAVY_PORT=8000 \
    WAVY_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
EXPOSE 8000
VOLUME ["/data"]
# Applies migrations, creates a webhook key if none exists (printed to the log), then serves.
CMD ["wavy-webhooks", "serve"]
