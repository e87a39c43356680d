FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine engine
COPY connectors connectors
COPY vigil vigil
COPY config config
RUN pip install --no-cache-dir .
ENTRYPOINT ["vigil"]
