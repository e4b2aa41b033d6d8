# linger in a container: the full toolchain (torch CPU build), the demo run at build time as a
# smoke test, and the demo plus the test suite as the default command.
#   docker build -t linger .
#   docker run --rm linger                       # demo, then python -m pytest -q
#   docker run --rm linger linger demo --out-dir /tmp/out
# See docs/install.md. CI does not build this image.
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /linger

# torch first, from PyTorch's CPU wheel index: the default index would pull the CUDA build
# (several GB) that a CPU-only container cannot use.
RUN python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY . .
RUN python -m pip install -e ".[test]" && linger demo --quiet

CMD ["sh", "-c", "linger demo && python -m pytest -q"]
