# The Spool image: API, worker and reactors all run from the `spool` command.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir .
EXPOSE 8081
CMD ["spool", "up", "--host", "0.0.0.0"]
