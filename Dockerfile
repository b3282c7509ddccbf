# The revsearch server (no torch: models are built by `make models` and mounted from the host).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt pyproject.toml ./
COPY clients clients
COPY server server
RUN pip install --no-cache-dir -c requirements.txt -e ".[server]"
# gRPC, then Prometheus metrics (--metrics-port)
EXPOSE 50051 9464
ENTRYPOINT ["revsearch-server"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--data-dir", "/data"]
