# Phoenix 95: one image for every process (brain, risk, execute, notify, paper
# exchange, Telegram worker, dashboard); the command picks the process.
# Build from the repository root:  docker build -t phoenix95:dev .
# Base pinned to a release (for production, pin its digest too: FROM python:...@sha256:...).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false \
    PHOENIX__SERVICES__HOST=0.0.0.0

WORKDIR /app

# Non-root runtime user with a fixed uid (k8s runAsUser matches it).
RUN groupadd --system --gid 10095 phoenix \
    && useradd --system --uid 10095 --gid phoenix --create-home \
       --home-dir /home/phoenix --shell /usr/sbin/nologin phoenix

# Runtime only, every package (transitive ones too) pinned and hash-checked: no test
# tools, no training libraries. requirements.lock = pip-compile --generate-hashes.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

# Code stays owned by root (read-only for the service); only the run and data
# directories are writable by the runtime user.
COPY . .
RUN mkdir -p /app/.run /app/var \
    && chown phoenix:phoenix /app/.run /app/var

USER 10095:10095

EXPOSE 8100 8101 8102 8103 8104 8110 8501

CMD ["python", "-c", "print('''Phoenix 95 image. Run one process per container:\n  python -m nameko_services.runner brain|risk|execute|notify   (HTTP 8100-8103)\n  python -m nameko_services.feed                               (HTTP 8104)\n  python -m nameko_services.paper_exchange                     (HTTP 8110)\n  python -m nameko_services.notify.telegram_worker\n  python -m streamlit run dashboard/app.py --server.port 8501 --server.address 0.0.0.0 --server.headless true\nConfiguration: PHOENIX__<SECTION>__<KEY> environment variables (see config.yaml, docs/deployment.md).''')"]
