# One image for web, worker and worker-gpu. Build with a CUDA torch for GPU nodes:
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" .        (PyPI's default build has CUDA)
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DISTILLERY_DATA_DIR=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

RUN apt-get update && apt-get install -y --no-install-recommends \
      libtcmalloc-minimal4 libpq5 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY distillery distillery
COPY projects projects
COPY jobs jobs
COPY worker worker
RUN pip install --no-cache-dir "$TORCH_SPEC" \
 && pip install --no-cache-dir '.[ml,cuda]'
COPY . .
RUN DISTILLERY_ENV=development python manage.py collectstatic --noinput

EXPOSE 8000
CMD ["gunicorn", "distillery.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "16", "--timeout", "120"]
