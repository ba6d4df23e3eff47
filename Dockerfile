FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tracker ./tracker
COPY protocols ./protocols
COPY geofences ./geofences
COPY migrations ./migrations
RUN pip install --no-cache-dir .
ENV TRACKER_MIGRATIONS_DIR=/app/migrations \
    TRACKER_HTTP_HOST=0.0.0.0 \
    TRACKER_DATA_DIR=/data
VOLUME /data
# REST API + live map, GT06 (TCP), OsmAnd (HTTP)
EXPOSE 8082 5023 5055
CMD ["tracker", "serve"]
