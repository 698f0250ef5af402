# The qai-jobs service image: worker, beat, api, flower and migrate all run from it.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap git nodejs npm \
    passt nftables dnsmasq-base iproute2 e2fsprogs haproxy \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py alembic.ini ./
COPY alembic ./alembic
COPY qai_jobs ./qai_jobs
RUN pip install --no-cache-dir -e '.[modal,e2b]'
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["qai-jobs"]
CMD ["--help"]
