# One image for web, worker and worker-gpu. Build with a CUDA torch for GPU nodes:
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" .        (PyPI's default build has CUDA)
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DISTILLERY_DATA_DIR=/data HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# cmake and g++: llama-cpp-python (export bundles: GGUF, quantisation) is an sdist pip compiles.
RUN apt-get update && apt-get install -y --no-install-recommends \
      libtcmalloc-minimal4 libpq5 cmake g++ && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY distillery distillery
COPY projects projects
COPY jobs jobs
COPY worker worker
RUN pip install --no-cache-dir "$TORCH_SPEC" \
 && CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" pip install --no-cache-dir '.[ml,cuda,export]'
# llama.cpp's converter, from the same llama-cpp-python sdist (see the Makefile).
RUN v=$(python -c 'import llama_cpp; print(llama_cpp.__version__)') \
 && pip download --no-cache-dir --no-deps --no-binary :all: "llama-cpp-python==$v" -d /tmp/sdist \
 && mkdir -p /usr/local/share/llama.cpp \
 && tar -xzf /tmp/sdist/llama_cpp_python-$v.tar.gz -C /usr/local/share/llama.cpp --strip-components=3 \
      llama_cpp_python-$v/vendor/llama.cpp/convert_hf_to_gguf.py \
      llama_cpp_python-$v/vendor/llama.cpp/conversion llama_cpp_python-$v/vendor/llama.cpp/gguf-py \
 && rm -rf /tmp/sdist
COPY . .
RUN DISTILLERY_ENV=development python manage.py collectstatic --noinput

EXPOSE 8000
CMD ["gunicorn", "distillery.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "16", "--timeout", "120"]
