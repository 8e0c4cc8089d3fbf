# portfolio-sync: the service (`serve`, the default), queue workers (`worker`), one-shot
# passes (`sync --all`) and `setup`, all from one image configured through the environment.
#
#   docker build -t portfolio-sync .
#   docker run -d -p 8080:8080 -v portfolio-data:/data portfolio-sync
#
# Any Debian-like base with python3 (3.11+) and the venv module works:
#   --build-arg BASE_IMAGE=localhost/debian-base:bookworm   (what .ci/image-test builds on)
# Build behind an HTTPS proxy with its own CA (mounted for the pip steps only, never stored):
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.12-slim

# ---- the runtime requirements, read from pyproject.toml: the dependency layer below is keyed
# on this list and constraints.lock, not on the whole pyproject.toml (a tool setting edited
# there does not reinstall every dependency)
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
    > /requirements.txt

# ---- dependencies at their locked versions, in /opt/venv
FROM ${BASE_IMAGE} AS deps
# binutils (this stage only) strips debug symbols from extension modules: about 30 MB.
RUN command -v strip >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null; }
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY --from=requirements /requirements.txt ./
COPY constraints.lock ./
# Then pip and setuptools leave the venv (pip is kept aside in /opt/pip-tool for the next
# steps, the image gets neither), and extension modules lose their debug symbols; the
# libraries auditwheel bundled (*.libs/) are left as they are. .ci/image-test runs code of
# every stripped package (demo: Pillow; PostgreSQL: psycopg; serve: uvloop, SQLAlchemy).
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --quiet -c constraints.lock -r requirements.txt; \
    mkdir /opt/pip-tool; \
    cp -a "$(/opt/venv/bin/python -c 'import os, pip; print(os.path.dirname(pip.__file__))')" /opt/pip-tool/; \
    /opt/venv/bin/python -m pip uninstall --quiet -y pip setuptools; \
    find /opt/venv -name '*.so' -type f ! -path '*.libs/*' -exec strip --strip-unneeded {} +

# ---- the project's wheel (package data included), built the way `python -m build` does
FROM deps AS wheel
COPY pyproject.toml README.md ./
COPY src ./src
RUN --mount=type=secret,id=ca \
    set -eu; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; fi; \
    PYTHONPATH=/opt/pip-tool python3 -m pip wheel --quiet --no-deps --wheel-dir /wheels . ; \
    cp constraints.lock /wheels/

# ---- runtime: the base, the venv, the wheel; no pip, no build tools, no source tree
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="portfolio-sync" \
      org.opencontainers.image.description="Keep a database table's image lists in sync with an object-storage bucket."
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORTFOLIO_SYNC_HOST=0.0.0.0 \
    PORTFOLIO_SYNC_PORT=8080 \
    PORTFOLIO_SYNC_DATABASE_URL=sqlite:////data/portfolio-sync.db \
    PORTFOLIO_SYNC_STORAGE_URL=/data/storage
RUN groupadd --system --gid 10001 portfolio-sync \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin portfolio-sync \
    && mkdir -p /data/storage \
    && chown -R 10001:10001 /data
COPY --from=deps /opt/venv /opt/venv
# The wheel is COPYed rather than bind-mounted: a COPY's cache key is the files' content, so
# a changed wheel always reinstalls (builders may reuse a RUN whose mounted stage changed).
# --no-index: every dependency is already in the venv at its locked version; pip checks it.
COPY --from=wheel /wheels /tmp/wheels
RUN --mount=type=bind,from=deps,source=/opt/pip-tool,target=/tmp/pip-tool \
    PYTHONPATH=/tmp/pip-tool python -m pip install --quiet --no-cache-dir --no-index \
        -c /tmp/wheels/constraints.lock /tmp/wheels/portfolio_sync-*.whl \
    && rm -rf /tmp/wheels \
    && portfolio-sync --version
# Everything the service writes (SQLite file, local storage folder) lives under /data, so the
# container runs with a read-only root filesystem (`--read-only -v data:/data`).
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8080
# The command is PID 1 and handles SIGTERM itself: serve and worker stop gracefully (exit 0),
# a start-up or a one-shot command stops at once (exit 143). `--init` works too.
STOPSIGNAL SIGTERM
# For `serve`; workers have no HTTP and run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request as r; h = os.environ.get('PORTFOLIO_SYNC_HOST') or '127.0.0.1'; h = {'0.0.0.0': '127.0.0.1', '::': '[::1]'}.get(h, h); r.urlopen(f'http://{h}:' + os.environ.get('PORTFOLIO_SYNC_PORT', '8080') + '/healthz', timeout=4)"
ENTRYPOINT ["portfolio-sync"]
CMD ["serve"]
